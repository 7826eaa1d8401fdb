"""DETRIS's TextAdapter: dense 1-D conv branches over the words, beside the FFN of chosen CLIP text blocks
(jiaqihuang01/DETRIS@c94b1e1e, model/adapter.py::TextAdapter, placed in model/clip.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.models.adapters.dense import DenseBranches
from risbench.models.interfaces import Adapter
from risbench.registry import ADAPTERS


@dataclass
class TextAdapterConfig:
    """Options of the TextAdapter (DETRIS: blocks 1,3,...,11, width 64, scale 0.2)."""

    layers: tuple[int, ...] = ()  # 0-based text blocks that get one
    dim: int = 64  # bottleneck width r (txt_adapter_dim)
    scale: float = 0.2


@ADAPTERS.register("text_adapter", config=TextAdapterConfig)
class TextAdapter(Adapter):
    """x0 = ReLU(Linear(D -> r)(x)); the words after the first token through the dense branches (k = 1, 3, 5
    along the word axis); the first token put back; + x0; Linear(r -> D). No cross-attention.

    It reads the residual stream after attention (not LN2 of it, as DETRIS's block does), and its output,
    times `scale`, joins the FFN output. Padded words go through the convs as in DETRIS (no mask).
    PyTorch's default init (DETRIS sets none).
    """

    reads = "residual"
    needs_context = False
    tiny_options: ClassVar[dict[str, Any]] = {"dim": 16}

    def __init__(self, cfg: TextAdapterConfig, dim: int, context_dim: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.scale
        self.down = nn.Linear(dim, cfg.dim)
        self.dense = DenseBranches(cfg.dim, ndim=1)
        self.up = nn.Linear(cfg.dim, dim)

    def forward(
        self,
        x: Tensor,
        prefix: int = 1,
        grid: tuple[int, int] | None = None,
        context: Tensor | None = None,
        context_pad_mask: Tensor | None = None,
    ) -> Tensor:
        x0 = F.relu(self.down(x))
        y = self.dense(x0[:, prefix:].transpose(1, 2)).transpose(1, 2)
        out = torch.cat([x0[:, :prefix], y], dim=1) + x0
        return self.up(out)
