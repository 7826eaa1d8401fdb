"""SAM's mask decoder (two-way transformer) as a decoder: RISAM Table 2 "r. DE" (docs/decisions.md "RISAM").

Written from the architecture of segment-anything's `MaskDecoder` / `TwoWayTransformer` (read, not copied):
tokens = [one mask token; the fused words as sparse prompts], pixels = the fused map with a random-Fourier
dense position encoding. Per layer: token self-attention (position added to q/k; the first layer's output
replaces the tokens, no residual), token-to-image attention, a token MLP (ReLU), image-to-token attention,
each followed by a LayerNorm; then a final token-to-image attention. Cross-attentions work at half width
(SAM's downsample rate 2). Head: ConvTranspose ×2 (C -> C/4 -> C/8, LayerNorm + GELU, then GELU) and a
3-layer MLP on the mask token; logits = token . pixel. For RIS: one mask token, no IoU token or head, no
dense (mask) prompt; padded words are masked as keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from risbench.models.decoders.risam import token_mlp
from risbench.models.interfaces import Decoder, DecoderOutput, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec
from risbench.models.layers import sdpa_heads
from risbench.models.pyramid import LayerNorm2d
from risbench.registry import DECODERS


@dataclass
class SamTwoWayConfig:
    """Options of the SAM two-way mask decoder (SAM: 2 layers, 8 heads, MLP 2048, downsample 2)."""

    num_layers: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    downsample: int = 2


class DownAttention(nn.Module):
    """SAM's attention: q/k/v projected to dim / downsample, heads, back to dim (SDPA; key_mask True = attend)."""

    def __init__(self, dim: int, heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner) for _ in range(3))
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        return self.out_proj(sdpa_heads(self.q_proj(q), self.k_proj(k), self.v_proj(v), self.heads, key_mask))


class TwoWayLayer(nn.Module):
    """Token self-attention, token-to-image, token MLP, image-to-token; a LayerNorm after each."""

    def __init__(self, dim: int, cfg: SamTwoWayConfig, first: bool) -> None:
        super().__init__()
        self.first = first
        self.self_attn = DownAttention(dim, cfg.num_heads)
        self.t2i = DownAttention(dim, cfg.num_heads, cfg.downsample)
        self.mlp = nn.Sequential(nn.Linear(dim, cfg.mlp_dim), nn.ReLU(inplace=True), nn.Linear(cfg.mlp_dim, dim))
        self.i2t = DownAttention(dim, cfg.num_heads, cfg.downsample)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(self, t: Tensor, x: Tensor, t_pe: Tensor, x_pe: Tensor, t_keep: Tensor) -> tuple[Tensor, Tensor]:
        if self.first:
            t = self.self_attn(t, t, t, t_keep)
        else:
            q = t + t_pe
            t = t + self.self_attn(q, q, t, t_keep)
        t = self.norms[0](t)
        t = self.norms[1](t + self.t2i(t + t_pe, x + x_pe, x))
        t = self.norms[2](t + self.mlp(t))
        x = self.norms[3](x + self.i2t(x + x_pe, t + t_pe, t, t_keep))
        return t, x


@DECODERS.register("sam_two_way", config=SamTwoWayConfig)
class SamTwoWayDecoder(Decoder):
    """fused (map, words at one width C) -> mask logits (B, 1, 4H, 4W), SAM's decoder with the words as prompts."""

    requires = frozenset({"text_tokens"})
    tiny_options: ClassVar[dict[str, Any]] = {"num_layers": 1, "num_heads": 2, "mlp_dim": 32}

    def __init__(self, cfg: SamTwoWayConfig, in_spec: FusedSpec, enc_spec: FeatureSpec) -> None:
        super().__init__()
        d = in_spec.dim
        self.mask_token = nn.Embedding(1, d)
        self.register_buffer("fourier", torch.randn(2, d // 2), persistent=True)  # SAM's PositionEmbeddingRandom
        self.layers = nn.ModuleList(TwoWayLayer(d, cfg, first=i == 0) for i in range(cfg.num_layers))
        self.final_t2i = DownAttention(d, cfg.num_heads, cfg.downsample)
        self.final_norm = nn.LayerNorm(d)
        d1, d2 = d // 4, d // 8
        self.upscale = nn.Sequential(
            nn.ConvTranspose2d(d, d1, 2, stride=2),
            LayerNorm2d(d1),
            nn.GELU(),
            nn.ConvTranspose2d(d1, d2, 2, stride=2),
            nn.GELU(),
        )
        self.token_mlp = token_mlp(d, d2, 3)

    def flop_parts(self) -> dict[str, str]:
        return {"mask decoder (SAM two-way)": ""}

    def dense_pe(self, h: int, w: int, like: Tensor) -> Tensor:
        """(H*W, C) random Fourier features of the pixel centres in [-1, 1]."""
        ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) / h
        xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
        proj = 2 * math.pi * torch.matmul(2 * grid - 1, self.fourier.to(like.dtype))
        return torch.cat([proj.sin(), proj.cos()], -1)

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures) -> DecoderOutput:
        b, d, h, w = fused.visual.shape
        x = fused.visual.flatten(2).transpose(1, 2)
        x_pe = self.dense_pe(h, w, x)[None]
        t = torch.cat([self.mask_token.weight[None].expand(b, -1, -1), fused.text], 1)
        pad = torch.cat([torch.zeros_like(fused.text_pad_mask[:, :1]), fused.text_pad_mask], 1)
        keep = (~pad)[:, None, None, :]
        t_pe = t
        for layer in self.layers:
            t, x = layer(t, x, t_pe, x_pe, keep)
        t = self.final_norm(t + self.final_t2i(t + t_pe, x + x_pe, x))
        up = self.upscale(x.transpose(1, 2).reshape(b, d, h, w))
        logits = torch.matmul(self.token_mlp(t[:, :1]), up.flatten(2)).view(b, 1, *up.shape[-2:])
        return DecoderOutput(logits)
