"""What masked modelling masks and predicts: random token choices, patches of an image, blanked pixels and
MaskFeat's HOG targets; shared by the pretraining objectives (`beit3_mdm`, the dual encoder's)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

HOG_BINS, HOG_CELLS = 9, 2  # MaskFeat's 9 orientation bins; cells of half a patch a side


def choose_masked(candidates: Tensor, ratio: float) -> Tensor:
    """(B, N) bool: round(ratio * count) of each row's True positions (at least one where a row has any),
    chosen uniformly with torch's global generator."""
    scores = torch.rand(candidates.shape, device=candidates.device).masked_fill(~candidates, 2.0)
    count = candidates.sum(dim=1, keepdim=True)
    k = (count.float() * ratio).round().long().clamp(min=1).minimum(count)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return (rank < k) & candidates


def patchify(image: Tensor, patch: int) -> Tensor:
    """(B, 3, S, S) -> (B, n, 3 * patch * patch), patches in row-major order (the encoder's token order)."""
    b, c, h, w = image.shape
    x = image.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def hog_targets(image: Tensor, patch: int) -> Tensor:
    """(B, 3, S, S) -> (B, n, 3 * HOG_BINS * HOG_CELLS**2): per patch (row-major, the encoder's order), per
    channel and cell, the gradient magnitudes summed by unsigned orientation bin (central differences)."""
    b, c, h, w = image.shape
    x = F.pad(image.float(), (1, 1, 1, 1), mode="replicate")
    gx = x[:, :, 1:-1, 2:] - x[:, :, 1:-1, :-2]
    gy = x[:, :, 2:, 1:-1] - x[:, :, :-2, 1:-1]
    magnitude = torch.sqrt(gx * gx + gy * gy)
    angle = torch.atan2(gy, gx) % math.pi  # unsigned: [0, pi)
    bins = (angle / math.pi * HOG_BINS).long().clamp(max=HOG_BINS - 1)
    hist = torch.zeros(b, c, HOG_BINS, h, w, device=image.device).scatter_(2, bins[:, :, None], magnitude[:, :, None])
    cell = patch // HOG_CELLS
    hist = hist.reshape(b, c, HOG_BINS, h // cell, cell, w // cell, cell).sum((4, 6))  # (B, C, bins, H/cell, W/cell)
    g = h // patch
    hist = hist.reshape(b, c, HOG_BINS, g, HOG_CELLS, g, HOG_CELLS).permute(0, 3, 5, 1, 2, 4, 6)
    return hist.reshape(b, g * g, c * HOG_BINS * HOG_CELLS**2)


def blank_patches(image: Tensor, patch_mask: Tensor, patch: int) -> Tensor:
    """`image` with the pixels of the masked patches set to 0. The patch stem's tokens of those patches are
    replaced by the mask token anyway (so this changes nothing there); a convolutional stem's receptive field
    crosses patch borders, and without it the neighbours' tokens would see the pixels to be predicted."""
    b, _, h, w = image.shape
    grid = (~patch_mask).to(image.dtype).reshape(b, 1, h // patch, w // patch)
    return image * grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
