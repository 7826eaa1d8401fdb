"""DETRIS's dense multi-kernel conv branches (jiaqihuang01/DETRIS@c94b1e1e, model/adapter.py), shared by the
DenseAligner (2-D, over the patch grid) and the TextAdapter (1-D, over the words)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def basic_conv(cin: int, cout: int, kernel: int, ndim: int) -> nn.Sequential:
    """Conv (with bias, same padding) -> BN (eps 1e-3) -> ReLU, in 1-D or 2-D (DETRIS's BasicConv{1,2}d)."""
    conv = nn.Conv2d if ndim == 2 else nn.Conv1d
    norm = nn.BatchNorm2d if ndim == 2 else nn.BatchNorm1d
    return nn.Sequential(conv(cin, cout, kernel, padding=kernel // 2, bias=True), norm(cout, eps=1e-3), nn.ReLU())


class DenseBranches(nn.Module):
    """Three branches, DenseNet-like: branch k reads the input concatenated with all earlier branches.

    Widths for bottleneck width r (DETRIS's ch1x1 = r/2, ch3x3red = ch5x5red = r/16, ch3x3 = ch5x5 = r/4):
    b1 = conv1x1(r -> r/2); b2 = conv1x1(r + r/2 -> r/16) -> conv3x3(-> r/4);
    b3 = conv1x1(r + r/2 + r/4 -> r/16) -> conv5x5(-> r/4); output concat(b1, b2, b3): r channels.
    """

    def __init__(self, r: int, ndim: int) -> None:
        super().__init__()
        if r % 16:
            raise ValueError(f"dense branches: width {r} must be a multiple of 16")
        c1, red, c3 = r // 2, r // 16, r // 4
        self.b1 = basic_conv(r, c1, 1, ndim)
        self.b2 = nn.Sequential(basic_conv(r + c1, red, 1, ndim), basic_conv(red, c3, 3, ndim))
        self.b3 = nn.Sequential(basic_conv(r + c1 + c3, red, 1, ndim), basic_conv(red, c3, 5, ndim))
        self.out_channels = c1 + 2 * c3

    def forward(self, x: Tensor) -> Tensor:
        y1 = self.b1(x)
        y2 = self.b2(torch.cat([x, y1], dim=1))
        y3 = self.b3(torch.cat([x, y1, y2], dim=1))
        return torch.cat([y1, y2, y3], dim=1)
