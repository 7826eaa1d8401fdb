"""Multi-scale deformable attention (Deformable-DETR, Zhu et al. ICLR'21) in pure PyTorch, and the encoder layer
that Mask2Former's pixel decoder stacks (mmcv 1.7's `MultiScaleDeformableAttention` + `BaseTransformerLayer`
with operation order self_attn -> norm -> ffn -> norm, as RefSegformer's `model/msdeformattn_pixel_decoder.py`
builds it). A library module, not a registered component.

The sampling is written with `F.grid_sample` (bilinear, zero padding, align_corners=False), which is what the
CUDA kernel computes: a sampling location (x, y) in [0, 1] of a level of size (h, w) reads the feature at pixel
coordinates (x w - 0.5, y h - 0.5), the centre of pixel (i, j) being at ((j + 0.5) / w, (i + 0.5) / h).
fvcore counts `aten::grid_sampler` as 4 flops (the 4 corners) per sampled value, as it counts mmcv's own
pure-PyTorch path (`multi_scale_deformable_attn_pytorch`, also grid_sample); the CUDA kernel is not traceable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_sample(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """The deformable attention core.

    value: (B, S, heads, Dh) with S = sum of h_l * w_l (levels concatenated, row-major);
    locations: (B, Nq, heads, levels, points, 2) as (x, y) in [0, 1]; weights: (B, Nq, heads, levels, points).
    Returns (B, Nq, heads * Dh): per head, the weighted sum of the bilinear samples.
    """
    b, _, heads, dh = value.shape
    _, nq, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * locations - 1.0  # grid_sample's [-1, 1]
    samples = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].permute(0, 2, 3, 1).reshape(b * heads, dh, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * heads, nq, points, 2)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*heads, Dh, Nq, levels*points) weighted by (B*heads, 1, Nq, levels*points)
    stacked = torch.stack(samples, dim=-2).flatten(-2)
    w = weights.transpose(1, 2).reshape(b * heads, 1, nq, levels * points)
    out = (stacked * w).sum(-1)  # (B*heads, Dh, Nq)
    return out.view(b, heads * dh, nq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with mmcv's parameter layout and initialisation.

    Per query and head: `points` offsets per level (Linear of the query, divided by the level's (w, h)) around the
    query's reference point, and softmax weights over levels x points. Values are `value_proj` of the input
    (without positions); the output goes through `output_proj`, then dropout, then the residual (mmcv adds the
    identity inside the attention)."""

    def __init__(self, dim: int = 256, heads: int = 8, levels: int = 3, points: int = 4, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv's init: zero offset weights with a bias that puts point k of head h at distance k + 1 in the
        direction h * 2 pi / heads (scaled to the unit square's border), uniform attention, Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        """x, pos: (B, N, D) queries = values (all levels); reference: (B, N, levels, 2) in [0, 1] -> (B, N, D)."""
        b, n, d = x.shape
        q = x + pos
        value = self.value_proj(x).view(b, n, self.heads, d // self.heads)
        offsets = self.sampling_offsets(q).view(b, n, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(q).view(b, n, self.heads, self.levels * self.points).softmax(-1)
        weights = weights.view(b, n, self.heads, self.levels, self.points)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=x.dtype, device=x.device)
        locations = reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = self.output_proj(ms_deform_sample(value, shapes, locations, weights))
        return x + self.dropout(out)


class FFN(nn.Module):
    """mmcv's FFN with its key layout: layers.0 = (Linear, ReLU, Dropout), layers.1 = Linear, layers.2 = Dropout;
    the residual is added inside."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class DeformEncoderLayer(nn.Module):
    """Post-norm encoder layer: x <- LN(MSDeformAttn(x) incl. residual); x <- LN(FFN(x) incl. residual).

    Sub-module names follow mmcv's BaseTransformerLayer (attentions.0, ffns.0, norms.0/1) so that released
    state dicts map one to one."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attentions = nn.ModuleList([MSDeformAttn(dim, heads, levels, points, dropout)])
        self.ffns = nn.ModuleList([FFN(dim, ffn_dim, dropout)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(self, x: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        x = self.norms[0](self.attentions[0](x, pos, reference, shapes))
        return self.norms[1](self.ffns[0](x))


def reference_points(shapes: list[tuple[int, int]], batch: int, device, dtype) -> Tensor:
    """Pixel centres of every level, normalised to [0, 1] as (x, y): (B, sum h_l w_l, levels, 2) (the same point
    on every level, as Mask2Former's pixel decoder with valid ratios 1)."""
    pts = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
            (torch.arange(w, device=device, dtype=dtype) + 0.5) / w,
            indexing="ij",
        )
        pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    ref = torch.cat(pts, 0)
    return ref[None, :, None].expand(batch, -1, len(shapes), -1)


def sine_position(h: int, w: int, num_feats: int, like: Tensor, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised sine positions (mmdet's SinePositionalEncoding, normalize=True, scale 2 pi, eps 1e-6,
    no offset) for an unpadded (h, w) grid: (1, 2 num_feats, h, w), y channels first, then x."""
    eps, scale = 1e-6, 2.0 * math.pi
    y = torch.arange(1, h + 1, device=like.device, dtype=torch.float32)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, device=like.device, dtype=torch.float32)[None, :].expand(h, w)
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    dim_t = torch.arange(num_feats, device=like.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack([px[..., 0::2].sin(), px[..., 1::2].cos()], dim=-1).flatten(-2)
    py = torch.stack([py[..., 0::2].sin(), py[..., 1::2].cos()], dim=-1).flatten(-2)
    return torch.cat([py, px], dim=-1).permute(2, 0, 1)[None].to(like.dtype)
