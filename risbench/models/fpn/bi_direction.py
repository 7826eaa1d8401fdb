"""The bi-direction FPN of Shared-RIS's fusion ablation (seed000 Table VII(b), Fig. 5; docs/decisions.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from risbench.models.bi_attention import MLP_ON, BiAttentionLayer, default_embed_dim
from risbench.models.fpn.shared import ModalityLinear, _check_single_width, _joint_tokens, _split_fused
from risbench.models.interfaces import FPN, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec
from risbench.registry import FPNS

POSITIONS = ("projected", "encoder")


@dataclass
class BiDirectionFPNConfig:
    """Options of the bi-direction FPN."""

    dim: int = 512  # d_w
    position: str = "projected"  # where the block sits: on the W_j-projected d_w tokens, or on the encoder's tokens
    embed_dim: int | None = None  # None: 4 x the width at `position` (Grounding DINO's dim_feedforward // 2)
    num_heads: int = 4  # Grounding DINO's nhead // 2, with the Shared FPN's 8 heads
    mlp_on: str = "both"  # the MLP after the block: "both" (one MLP over the joint sequence), "visual", "none"
    mlp_ratio: float = 4.0
    multiway_proj: bool = True  # per-modality W_j, as the Shared FPN
    mask_text_padding: bool = True
    dropout: float = 0.0  # on the attention probabilities (Grounding DINO's fusion_dropout)
    drop_path: float = 0.1  # Grounding DINO's fusion_droppath
    init_values: float = 1e-4  # layer scale

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got '{self.position}'")
        if self.mlp_on not in MLP_ON:
            raise ValueError(f"mlp_on must be one of {', '.join(MLP_ON)}, got '{self.mlp_on}'")


@FPNS.register("bi_direction", config=BiDirectionFPNConfig)
class BiDirectionFPN(FPN):
    """Shared FPN with the fusion operator swapped for Grounding DINO's bi-directional attention block.

    Per stage j: (v, t) = BiAttentionBlock(h_j W_j split into visual (CLS + patches) and text tokens), padded
    words masked in the vision->text direction, then (`mlp_on`) the pre-LN MLP with residual; then concat_j(v; t)
    + W_f exactly as the Shared FPN. Block internals as Grounding DINO (`risbench.models.bi_attention`): its output
    is LN(x) + gamma * delta.
    Decisions (docs/decisions.md §2 FLAG: the paper gives neither the width, the heads nor what follows the block):
    - `position: projected` (default): the block sits where the Shared FPN's MSA sits, on the d_w = 512 tokens after
      W_j, as Grounding DINO runs it on d_model tokens after its input projections; embed_dim 4 x 512 = 2048 and
      4 heads (GDINO's dim_feedforward // 2 = 4 x d_model and nhead // 2). `position: encoder` runs the block on the
      d = 768 encoder tokens and then W_j (embed_dim 4 x 768 by default).
    - `mlp_on: both` (default): the block is followed by the Shared decoder layer's MLP (ratio 4, one MLP for both
      modalities), i.e. the same fusion unit as the `bi_direction` decoder (which the paper's decoder row pins:
      14M / 51G). Grounding DINO follows its fusion with an FFN per modality. It is the only reading we found that
      gives both of the paper's numbers.
    Counts (BEiT-3-B, 4 stages, 480 px, 20 tokens, fpn component; paper Table VII(b): 37M / 22G):
      projected, E 2048, 4 heads: + MLP both 37.8M / 22.2G (default); + MLP visual 37.8M / 22.0G;
        bare block 29.4M / 14.5G; bare block with E 1024 (d_w's MLP width // 2) 16.8M / 8.4G;
      encoder (768-d), bare block: E 3072 60.9M / 29.2G; E 2048 42.0M / 20.3G; E 1536 (BEiT-3's FFN // 2),
        6 heads 32.6M / 15.8G, + MLP both (at 768) 51.5M / 33.2G.
    """

    tiny_options: ClassVar[dict[str, Any]] = {"dim": 16, "num_heads": 2, "drop_path": 0.0}

    requires = frozenset({"joint_tokens", "single_scale"})

    def __init__(self, cfg: BiDirectionFPNConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        din = _check_single_width(in_spec, "bi_direction")
        k = len(in_spec.visual_dims)
        self.cfg = cfg
        width = cfg.dim if cfg.position == "projected" else din
        embed = cfg.embed_dim or default_embed_dim(width)
        self.proj = nn.ModuleList([ModalityLinear(din, cfg.dim, cfg.multiway_proj) for _ in range(k)])
        self.block = nn.ModuleList(
            [
                BiAttentionLayer(
                    width, embed, cfg.num_heads, cfg.mlp_ratio, cfg.mlp_on, cfg.dropout, cfg.drop_path, cfg.init_values
                )
                for _ in range(k)
            ]
        )
        self.fuse = nn.Linear(k * cfg.dim, cfg.dim)
        self.out_spec = FusedSpec(cfg.dim, in_spec.visual_strides[-1], frozenset({"text_tokens", "visual_cls"}))

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        grid = feats.visual[0].shape[-2:]
        has_cls = feats.visual_cls is not None
        num_prefix = grid[0] * grid[1] + int(has_cls)
        pad = feats.text_pad_mask if self.cfg.mask_text_padding else None
        projected_first = self.cfg.position == "projected"
        outs = []
        for k in range(len(self.proj)):
            v, t, cls = _joint_tokens(feats, k)
            if has_cls:
                v = torch.cat([cls[:, None], v], dim=1)
            if projected_first:
                v, t = self.block[k](*self.proj[k](v, t), pad)
            else:
                v, t = self.proj[k](*self.block[k](v, t, pad))
            outs.append(torch.cat([v, t], dim=1))
        z = self.fuse(torch.cat(outs, dim=-1))
        return _split_fused(z, num_prefix, has_cls, grid, feats.text_pad_mask)
