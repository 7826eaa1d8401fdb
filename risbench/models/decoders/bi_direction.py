"""The bi-direction decoder of Shared-RIS's fusion ablation (seed000 Table VIII(b), Fig. 5; docs/decisions.md §3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from risbench.models.bi_attention import MLP_ON, BiAttentionLayer, default_embed_dim
from risbench.models.decoders.head import MaskHead, MaskHeadConfig
from risbench.models.decoders.shared import joint_sequence, split_joint_sequence
from risbench.models.interfaces import Decoder, DecoderOutput, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec
from risbench.registry import DECODERS


@dataclass
class BiDirectionDecoderConfig:
    """Options of the bi-direction decoder."""

    num_layers: int = 1
    embed_dim: int | None = None  # None: 4 x d_w (Grounding DINO's dim_feedforward // 2 = 4 x d_model)
    num_heads: int = 4  # Grounding DINO's nhead // 2, with the Shared decoder's 8 heads
    mlp_ratio: float = 4.0
    mlp_on: str = "both"  # "both": one MLP over the joint sequence (Shared layer, Eq. 9); "visual"; "none"
    mask_text_padding: bool = True
    dropout: float = 0.0
    drop_path: float = 0.1  # Grounding DINO's fusion_droppath
    init_values: float = 1e-4
    head: MaskHeadConfig = field(default_factory=MaskHeadConfig)

    def __post_init__(self) -> None:
        if self.mlp_on not in MLP_ON:
            raise ValueError(f"mlp_on must be one of {', '.join(MLP_ON)}, got '{self.mlp_on}'")


@DECODERS.register("bi_direction", config=BiDirectionDecoderConfig)
class BiDirectionDecoder(Decoder):
    """Shared decoder with the fusion operator swapped for Grounding DINO's bi-directional attention block.

    Each layer: the block updates visual (CLS + patches) and text tokens from one shared logit tensor (padded words
    masked), then the Shared layer's MLP with its pre-LN and residual; then the same mask head on the text CLS.
    Decisions (docs/decisions.md §3 FLAG): the block replaces the MSA only, so the layer keeps its MLP, and keeps it
    shared over both modalities as in the Shared layer (Eq. 9); Grounding DINO also follows the fusion with an FFN
    on each modality. embed_dim 4 x d_w = 2048 and 4 heads (GDINO's ratios). The mask head reads the text CLS,
    which the block and the MLP both update. Counts (BEiT-3-B, 480 px, 20 tokens): 13.91M / 51.25G vs the
    paper's 14M / 51G (Table VIII(b)); `mlp_on: visual` 13.91M / 51.21G; `mlp_on: none` 11.81M / 49.32G.
    """

    tiny_options: ClassVar[dict[str, Any]] = {"num_heads": 2, "drop_path": 0.0, "head": {"conv_dim": 8}}

    requires = frozenset({"text_tokens"})

    def __init__(self, cfg: BiDirectionDecoderConfig, in_spec: FusedSpec, enc_spec: FeatureSpec) -> None:
        super().__init__()
        self.cfg = cfg
        embed = cfg.embed_dim or default_embed_dim(in_spec.dim)
        self.layers = nn.ModuleList(
            [
                BiAttentionLayer(
                    in_spec.dim,
                    embed,
                    cfg.num_heads,
                    cfg.mlp_ratio,
                    cfg.mlp_on,
                    cfg.dropout,
                    cfg.drop_path,
                    cfg.init_values,
                )
                for _ in range(cfg.num_layers)
            ]
        )
        self.head = MaskHead(in_spec.dim, cfg.head)

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures) -> DecoderOutput:
        seq, num_visual = joint_sequence(fused)
        v, t = seq[:, :num_visual], seq[:, num_visual:]
        pad = fused.text_pad_mask if self.cfg.mask_text_padding else None
        for layer in self.layers:
            v, t = layer(v, t, pad)
        visual, text = split_joint_sequence(torch.cat([v, t], dim=1), num_visual, fused)
        return DecoderOutput(self.head(visual, text[:, 0]))
