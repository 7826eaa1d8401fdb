"""The Shared-RIS mask head (seed000 §III-C, Eq. 10-11): upsample the visual map, MLP on the text
CLS, per-pixel dot product. Reused by every decoder that ends in a text-conditioned dot product."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from risbench.models.layers import conv_bn_relu


@dataclass
class MaskHeadConfig:
    """Options of the dot-product mask head."""

    num_upsample: int = 2  # l in the paper: two x2 steps -> 1/4 of the input
    conv_dim: int = 512
    final_1x1: bool = True
    text_mlp_layers: int = 2


class MaskHead(nn.Module):
    """[Upsample x2 -> Conv3x3 -> BN -> ReLU] x l -> Conv1x1, and mask = <F(i,j), MLP(t_cls)>.

    The paper lists the conv block and the dot product; the FLOP count (No Fusion = 46G) pins the conv
    width at 512 at both scales and leaves ~3.8G that one 1x1 conv 512->512 at 120^2 explains (as in
    CRIS's projector): `final_1x1` (docs/decisions.md §3 Shared decoder FLAG). Upsampling is bilinear; the text MLP is
    Linear -> ReLU -> Linear at width 512 (`text_mlp_layers`).
    """

    def __init__(self, dim: int, cfg: MaskHeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MaskHeadConfig()
        blocks: list[nn.Module] = []
        cin = dim
        for _ in range(cfg.num_upsample):
            blocks += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            blocks += list(conv_bn_relu(cin, cfg.conv_dim, 3))
            cin = cfg.conv_dim
        if cfg.final_1x1:
            blocks.append(nn.Conv2d(cin, cin, 1))
        self.visual = nn.Sequential(*blocks)
        layers: list[nn.Module] = []
        tin = dim
        for i in range(cfg.text_mlp_layers):
            layers.append(nn.Linear(tin, cin))
            if i < cfg.text_mlp_layers - 1:
                layers.append(nn.ReLU(inplace=True))
            tin = cin
        self.text = nn.Sequential(*layers) if layers else nn.Identity()

    def forward(self, visual_map: Tensor, text_cls: Tensor) -> Tensor:
        """visual_map (B, D, h, w), text_cls (B, D) -> logits (B, 1, h*2^l, w*2^l)."""
        feat = self.visual(visual_map)
        kernel = self.text(text_cls)
        return torch.einsum("bchw,bc->bhw", feat, kernel).unsqueeze(1)
