"""DETRIS's DenseAligner: the visual adapter beside the FFN of chosen DINOv2 blocks, with dense conv branches
over the patch grid and a cross-aligner to the words (jiaqihuang01/DETRIS@c94b1e1e, model/adapter.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.models.adapters.dense import DenseBranches
from risbench.models.interfaces import Adapter
from risbench.models.layers import Attention
from risbench.registry import ADAPTERS


@dataclass
class DenseAlignerConfig:
    """Options of the DenseAligner (DETRIS: width 128, scale 0.2, cross-aligner 128 wide, 8 heads, dropout 0.1)."""

    layers: tuple[int, ...] = ()  # 0-based blocks that get one (DETRIS-B 1,3,...,11; -L 2,6,...,22)
    dim: int = 128  # bottleneck width r (visual_adapter_dim)
    scale: float = 0.2  # the adapter output is scaled by this before joining the FFN output
    cross_dim: int = 128  # the cross-aligner's attention width (embed_dim)
    cross_heads: int = 8
    cross_dropout: float = 0.1  # on the attention weights (nn.MultiheadAttention's dropout)
    mask_padding: bool = False  # DETRIS attends to padded words too (no key mask); true masks them


class CrossAligner(nn.Module):
    """Image tokens attend to the words: Linear(r -> E), Linear(C_text -> E), MHA(E), Linear(E -> r)."""

    def __init__(self, r: int, text_dim: int, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.image_proj = nn.Linear(r, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.back_proj = nn.Linear(dim, r)

    def forward(self, x: Tensor, words: Tensor, key_mask: Tensor | None) -> Tensor:
        return self.back_proj(self.attn(self.image_proj(x), self.text_proj(words), key_mask))


@ADAPTERS.register("dense_aligner", config=DenseAlignerConfig)
class DenseAligner(Adapter):
    """x0 = ReLU(Linear(D -> r)(x)); the patch tokens as an r x H x W map through the dense branches, plus
    that map; the cross-aligner to the words; the prefix tokens (CLS, registers) put back; + x0; Linear(r -> D).

    It reads the FFN's normed input and its output, times `scale`, joins the FFN output (DETRIS's Block).
    Init as DETRIS: Kaiming-normal (ReLU gain) on its convs and linears, zero biases; the attention's
    q/k/v take nn.MultiheadAttention's Xavier-uniform over the stacked in-projection.
    """

    reads = "ffn_input"
    needs_context = True
    tiny_options: ClassVar[dict[str, Any]] = {"dim": 16, "cross_dim": 16, "cross_heads": 2}

    def __init__(self, cfg: DenseAlignerConfig, dim: int, context_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.scale
        self.down = nn.Linear(dim, cfg.dim)
        self.dense = DenseBranches(cfg.dim, ndim=2)
        self.cross = CrossAligner(cfg.dim, context_dim, cfg.cross_dim, cfg.cross_heads, cfg.cross_dropout)
        self.up = nn.Linear(cfg.dim, dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        attn = self.cross.attn
        bound = math.sqrt(6.0 / (attn.q_proj.in_features + 3 * attn.q_proj.out_features))
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            nn.init.uniform_(proj.weight, -bound, bound)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        x: Tensor,
        prefix: int,
        grid: tuple[int, int] | None,
        context: Tensor | None,
        context_pad_mask: Tensor | None,
    ) -> Tensor:
        if grid is None or context is None:
            raise ValueError("dense_aligner needs the patch grid and the text context")
        x0 = F.relu(self.down(x))
        b, _, r = x0.shape
        xs = x0[:, prefix:].transpose(1, 2).reshape(b, r, grid[0], grid[1])
        y = (self.dense(xs) + xs).flatten(2).transpose(1, 2)
        key_mask = None
        if self.cfg.mask_padding and context_pad_mask is not None:
            key_mask = (~context_pad_mask)[:, None, None, :]
        y = self.cross(y, context, key_mask)
        out = torch.cat([x0[:, :prefix], y], dim=1) + x0
        return self.up(out)
