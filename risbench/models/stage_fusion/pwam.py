"""LAVT's PWAM + language gate inside the vision tower, after the blocks of every stage (yz93/LAVT-RIS@1da0af9f,
lib/backbone.py::MMBasicLayer.forward; CGFormer's backbone is the same). The modules are the `pwam` FPN's
(risbench/models/fpn/pwam.py): there they run on a finished encoder, here they feed the next stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from risbench.models.fpn.pwam import PWAM, LanguageGate
from risbench.models.stage_fusion.base import FusionOutput, StageFusion, StageInfo
from risbench.registry import STAGE_FUSIONS


@dataclass
class PWAMFusionConfig:
    """Options of LAVT's in-backbone PWAM."""

    num_heads: int = 1  # LAVT's num_heads_fusion (per stage: 1)
    dropout: float = 0.0  # LAVT's fusion_drop
    gate: bool = True  # the language gate (x + tanh(MLP(F)) * F); false: x + F


@STAGE_FUSIONS.register("pwam", config=PWAMFusionConfig)
class PWAMFusion(StageFusion):
    """LAVT's in-backbone PWAM + language gate: fuses the stage; the words pass on unchanged.

    F = PWAM(x, words); the next stage gets x + tanh(MLP(F)) * F; the encoder returns F (normed by the encoder's
    per-stage LayerNorm, LAVT's norm{i}); the words stay BERT's final states. Default stages: all."""

    tiny_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: PWAMFusionConfig, info: StageInfo) -> None:
        super().__init__()
        self.pwam = PWAM(info.dim, info.text_dim, cfg.num_heads, cfg.dropout)
        self.gate = LanguageGate(info.dim) if cfg.gate else None

    def forward(self, x: Tensor, grid: tuple[int, int], words: Tensor, pad: Tensor) -> FusionOutput:
        f = self.pwam(x, words, pad)
        visual = x + (self.gate(f) * f if self.gate is not None else f)
        return FusionOutput(visual, f, words)
