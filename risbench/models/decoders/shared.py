"""The Shared mask decoder of Shared-RIS (seed000 §III-C, Eq. 8-11) and its `no_fusion` variant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from risbench.models.decoders.head import MaskHead, MaskHeadConfig
from risbench.models.interfaces import (
    Decoder,
    DecoderOutput,
    EncoderFeatures,
    FeatureSpec,
    FusedFeatures,
    FusedSpec,
    attention_mask_from_padding,
    map_to_tokens,
    tokens_to_map,
)
from risbench.models.layers import Attention, Mlp
from risbench.registry import DECODERS


class SharedLayer(nn.Module):
    """Pre-LN transformer layer over the joint sequence, one MLP shared by both modalities (Eq. 8-9)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask=key_mask)
        return x + self.mlp(self.norm2(x))


def joint_sequence(fused: FusedFeatures) -> tuple[Tensor, int]:
    """[visual cls?, patches, text] as one (B, N, D) sequence, and the number of visual tokens."""
    vis = map_to_tokens(fused.visual)
    if fused.visual_cls is not None:
        vis = torch.cat([fused.visual_cls[:, None], vis], dim=1)
    return torch.cat([vis, fused.text], dim=1), vis.shape[1]


def split_joint_sequence(seq: Tensor, num_visual: int, fused: FusedFeatures) -> tuple[Tensor, Tensor]:
    """Inverse of `joint_sequence`: (visual map without cls, text tokens)."""
    vis, txt = seq[:, :num_visual], seq[:, num_visual:]
    if fused.visual_cls is not None:
        vis = vis[:, 1:]
    return tokens_to_map(vis, tuple(fused.visual.shape[-2:])), txt


@dataclass
class SharedDecoderConfig:
    """Options of the Shared decoder."""

    num_layers: int = 1
    num_heads: int = 8
    mlp_ratio: float = 4.0
    mask_text_padding: bool = True
    head: MaskHeadConfig = field(default_factory=MaskHeadConfig)


@DECODERS.register("shared", config=SharedDecoderConfig)
class SharedDecoder(Decoder):
    """Shared decoder: n pre-LN self-attention layers over vision+text, then the dot-product mask head.

    Decisions (docs/decisions.md §3 Shared decoder): MLP ratio 4 with GELU (each layer then adds ~3.1M params and ~3.8
    GFLOPs, as Table VIII(a) steps by 3M / 4G); the text CLS is the first text token (BEiT-3's <s>);
    padded text tokens are masked as keys. The paper's default is one layer.
    """

    tiny_options: ClassVar[dict[str, Any]] = {"num_heads": 2, "head": {"conv_dim": 8}}

    requires = frozenset({"text_tokens"})
    layer_cls: ClassVar[type[nn.Module]] = SharedLayer  # the fusion layer; variants swap only this

    def __init__(self, cfg: SharedDecoderConfig, in_spec: FusedSpec, enc_spec: FeatureSpec) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(
            [self.layer_cls(in_spec.dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_layers)]
        )
        self.head = MaskHead(in_spec.dim, cfg.head)

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures) -> DecoderOutput:
        visual, text = fused.visual, fused.text
        if len(self.layers):
            seq, num_visual = joint_sequence(fused)
            mask = attention_mask_from_padding(fused.text_pad_mask, num_visual) if self.cfg.mask_text_padding else None
            for layer in self.layers:
                seq = layer(seq, mask)
            visual, text = split_joint_sequence(seq, num_visual, fused)
        return DecoderOutput(self.head(visual, text[:, 0]))


@dataclass
class NoFusionDecoderConfig:
    """Options of the no-fusion decoder."""

    head: MaskHeadConfig = field(default_factory=MaskHeadConfig)


@DECODERS.register("no_fusion", config=NoFusionDecoderConfig)
class NoFusionDecoder(SharedDecoder):
    """No fusion in the decoder: the mask head applied straight to the FPN output (0 shared layers)."""

    tiny_options: ClassVar[dict[str, Any]] = {"head": {"conv_dim": 8}}

    def __init__(self, cfg: NoFusionDecoderConfig, in_spec: FusedSpec, enc_spec: FeatureSpec) -> None:
        super().__init__(SharedDecoderConfig(num_layers=0, head=cfg.head), in_spec, enc_spec)
