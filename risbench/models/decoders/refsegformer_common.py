"""What RefSegformer's two decoders share (jianzongwu/robust-ref-seg@e7c7da6f, model/segmentation_decoder_fusion.py,
utils/util.py::loss_with_exist): the 2-class mask conv and the negative-weighted cross-entropy.

Two classes vs one logit: the official mask convs give (background, foreground) logits and the loss is
`F.cross_entropy` over them. We keep the 2-channel conv (its weights load as released) and return d = fg - bg;
softmax([bg, fg])[fg] = sigmoid(d), and the 2-class CE of a pixel equals BCE-with-logits on d, value and gradient.
Upsampling commutes with the difference (bilinear is linear), so upsampling d equals upsampling both channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.models.layers import Attention


def official_attention(dim: int, heads: int, kv_dim: int | None = None) -> Attention:
    """Multi-head attention initialised as `ScaledDotProductAttention` (model/VLTF.py): weights N(0, 0.001^2),
    zero biases; q/k/v/out projections, as the decoders' cross-attentions and the existence head use it."""
    attn = Attention(dim, heads, kv_dim=kv_dim)
    for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
        nn.init.normal_(lin.weight, std=0.001)
        nn.init.zeros_(lin.bias)
    return attn


class TwoClassConv(nn.Conv2d):
    """Conv1x1 to (background, foreground) logits, returned as one logit fg - bg: (B, C, H, W) -> (B, 1, H, W)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        two = super().forward(x)
        return two[:, 1:2] - two[:, 0:1]


def full_mask(target: Tensor, batch: dict | None, full_resolution: bool, device) -> Tensor:
    """The ground truth the official loss uses: the batch's input-resolution mask (B, 1, S, S) when
    `full_resolution` and the batch has one, else `target` (already at the logits' resolution)."""
    mask = batch.get("mask") if full_resolution and isinstance(batch, dict) else None
    if mask is None:
        return target
    mask = mask.to(device)
    return (mask[:, None] if mask.ndim == 3 else mask).float()


def exists_of(batch: dict | None, n: int, device) -> Tensor:
    """(B,) bool: True for a positive sentence (`batch['exists']`; all True when the batch has none)."""
    flag = batch.get("exists") if isinstance(batch, dict) else None
    if flag is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.as_tensor(flag, device=device).reshape(-1).bool()


def negative_weighted_ce(logit: Tensor, mask: Tensor, exists: Tensor, neg_weight: float) -> Tensor:
    """RefSegformer's mask loss: CE(positives) + neg_weight x CE(negatives), each the mean over all pixels of its
    samples (a group absent from the batch adds 0), with `logit` (B, 1, h, w) upsampled bilinearly
    (align_corners=True, as `refsegformer.py` does) to the mask's (B, 1, H, W) size first."""
    logit = logit.float()
    if tuple(logit.shape[-2:]) != tuple(mask.shape[-2:]):
        logit = F.interpolate(logit, size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=True)
    per_pixel = F.binary_cross_entropy_with_logits(logit, mask.float(), reduction="none").flatten(1)
    loss = logit.new_zeros(())
    pos, neg = exists, ~exists
    if pos.any():
        loss = loss + per_pixel[pos].mean()
    if neg.any():
        loss = loss + neg_weight * per_pixel[neg].mean()
    return loss
