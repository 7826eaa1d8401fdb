"""RISAM's Mutual-Aware Mask Decoder (seed003 §3.4, Eqs. 6-9; docs/decisions.md "RISAM").

Per layer, with pixels x = F_lav (B, HW, C) and c = [F_m; F_val] (one learned multi-modal query token, then
the vision-aware words):
    x = x + MHSA(x);  c = c + MHSA(c);  x = x + MHCA(q = x, k = v = c)
each residual followed by a LayerNorm when `norm` (SAM's decoder does; Eqs. 6-9 print none). No FFN, no
pixel position encoding (the equations have none). Head: x as a map -> 2 x [ConvTranspose 2x2 stride 2 ->
BN -> GELU] (C -> C/4 -> C/8, SAM's upscaler widths) -> 4H x 4W; the token F^_m -> a 3-layer MLP (SAM's
hypernetwork) -> C/8; mask logits = token . every upsampled pixel.

Variants (Table 5): `token_to_image` (#9 "w/ TOI-A": after the token self-attention, c = c + MHCA(q = c,
k = v = x), SAM's token-to-image attention) and `linguistic_guidance: false` (#10 "w/o ELG": c holds the query
token only, the words are not used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from risbench.models.interfaces import Decoder, DecoderOutput, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec
from risbench.models.layers import Attention
from risbench.registry import DECODERS


@dataclass
class RisamDecoderConfig:
    """Options of the Mutual-Aware Mask Decoder (defaults: docs/decisions.md "RISAM")."""

    num_layers: int = 2  # SAM's decoder depth
    num_heads: int = 8  # SAM's
    norm: bool = True  # LayerNorm after each residual
    token_to_image: bool = False  # Table 5 #9
    linguistic_guidance: bool = True  # Table 5 #10: False
    mlp_layers: int = 3  # the token MLP (SAM's hypernetwork MLP)


class MaskDecoderLayer(nn.Module):
    """One decoder layer: pixel self-attention, token self-attention (TOI-A optional), pixel-to-token attention."""

    def __init__(self, dim: int, heads: int, norm: bool, token_to_image: bool) -> None:
        super().__init__()
        self.pixel_self = Attention(dim, heads)
        self.token_self = Attention(dim, heads)
        self.pixel_cross = Attention(dim, heads)
        self.token_cross = Attention(dim, heads) if token_to_image else None
        n = 4 if token_to_image else 3
        self.norms = nn.ModuleList((nn.LayerNorm(dim) if norm else nn.Identity()) for _ in range(n))

    def forward(self, x: Tensor, c: Tensor, c_keep: Tensor) -> tuple[Tensor, Tensor]:
        x = self.norms[0](x + self.pixel_self(x))
        c = self.norms[1](c + self.token_self(c, key_mask=c_keep))
        if self.token_cross is not None:
            c = self.norms[3](c + self.token_cross(c, x))
        x = self.norms[2](x + self.pixel_cross(x, c, key_mask=c_keep))
        return x, c


def token_mlp(dim: int, out: int, layers: int) -> nn.Sequential:
    """Linear -> ReLU -> ... -> Linear(out) with `layers` linears (SAM's MLP)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dim, out if i == layers - 1 else dim))
        if i < layers - 1:
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


@DECODERS.register("risam", config=RisamDecoderConfig)
class RisamDecoder(Decoder):
    """fused (F_lav map, F_val words at one width C) -> mask logits (B, 1, 4H, 4W)."""

    requires = frozenset({"text_tokens"})
    tiny_options: ClassVar[dict[str, Any]] = {"num_layers": 1, "num_heads": 2}

    def __init__(self, cfg: RisamDecoderConfig, in_spec: FusedSpec, enc_spec: FeatureSpec) -> None:
        super().__init__()
        d = in_spec.dim
        self.cfg = cfg
        self.query = nn.Embedding(1, d)  # the multi-modal query token F_m
        self.layers = nn.ModuleList(
            MaskDecoderLayer(d, cfg.num_heads, cfg.norm, cfg.token_to_image) for _ in range(cfg.num_layers)
        )
        d1, d2 = d // 4, d // 8
        self.upscale = nn.Sequential(
            nn.ConvTranspose2d(d, d1, 2, stride=2),
            nn.BatchNorm2d(d1),
            nn.GELU(),
            nn.ConvTranspose2d(d1, d2, 2, stride=2),
            nn.BatchNorm2d(d2),
            nn.GELU(),
        )
        self.token_mlp = token_mlp(d, d2, cfg.mlp_layers)

    def flop_parts(self) -> dict[str, str]:
        return {"mask decoder": ""}

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures) -> DecoderOutput:
        b, d, h, w = fused.visual.shape
        x = fused.visual.flatten(2).transpose(1, 2)
        token = self.query.weight[None].expand(b, -1, -1)
        if self.cfg.linguistic_guidance:
            c = torch.cat([token, fused.text], 1)
            pad = torch.cat([torch.zeros_like(fused.text_pad_mask[:, :1]), fused.text_pad_mask], 1)
        else:
            c = token
            pad = torch.zeros(b, 1, dtype=torch.bool, device=x.device)
        keep = (~pad)[:, None, None, :]
        for layer in self.layers:
            x, c = layer(x, c, keep)
        up = self.upscale(x.transpose(1, 2).reshape(b, d, h, w))  # (B, C/8, 4H, 4W)
        weights = self.token_mlp(c[:, :1])  # (B, 1, C/8)
        logits = torch.matmul(weights, up.flatten(2)).view(b, 1, *up.shape[-2:])
        return DecoderOutput(logits)
