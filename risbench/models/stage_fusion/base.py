"""Early fusion inside a vision tower: the hook that runs a fusion module after chosen stages of a tower.

`encoder: {name: swin_bert, ..., stage_fusion: {name: dmmi, stages: [1, 2, 3, 4], ...}}`. After the blocks of
each chosen stage (before its patch merging), the stage's fusion module reads the visual tokens and the words
and gives back three things: the visual tokens that continue into the next stage, the map the encoder returns
for that stage (to the FPN / decoder), and the words that later stages (and the encoder's text output) see.
LAVT (PWAM + gate), DMMI (its bidirectional interaction module) and RefSegformer (VLTF) are members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.registry import STAGE_FUSIONS


@dataclass(frozen=True)
class StageInfo:
    """What a fusion module is told about the stage it follows: 1-based index, width, heads, text width."""

    index: int
    dim: int
    num_heads: int
    text_dim: int


@dataclass
class FusionOutput:
    """What one stage's fusion gives back.

    visual: (B, HW, C) the tokens that continue into the stage's patch merging and the next stage;
    out: (B, HW, C) the map the encoder returns for this stage (LAVT / DMMI: the fusion output F, RefSegformer:
    the VLTF output alone); words: (B, L, D) the words from here on (DMMI updates them; the others pass them on);
    memory: (B, M, C) tokens that carry the sentence (VLTF: [blank; language memory]), or None.
    """

    visual: Tensor
    out: Tensor
    words: Tensor
    memory: Tensor | None = None


class StageFusion(nn.Module):
    """Base class of a stage-fusion member: one instance per fused stage.

    forward(x (B, HW, C), grid (H, W), words (B, L, D), pad (B, L) True = padding) -> FusionOutput.
    Padded words must not change the valid outputs (the hook's contract; tests/test_stage_fusion.py)."""

    tiny_options: ClassVar[dict[str, Any]] = {}
    default_stages: ClassVar[tuple[int, ...] | None] = None  # None = every stage of the tower


@dataclass
class _HookConfig:
    name: str
    stages: tuple[int, ...] | None


def _split(section: Any, where: str) -> tuple[_HookConfig, dict[str, Any]]:
    if not isinstance(section, dict) or "name" not in section:
        raise RisbenchError(
            f"{where}: expected a mapping with a 'name' (one of {', '.join(STAGE_FUSIONS.names())}), got {section!r}"
        )
    params = {k: v for k, v in section.items() if k not in ("name", "stages")}
    stages = section.get("stages")
    return _HookConfig(str(section["name"]), None if stages is None else tuple(stages)), params


class StageFusionHook(nn.Module):
    """The fusion modules of one vision tower, one per fused stage (`modules[str(stage)]`, 1-based stages).

    Built from the `stage_fusion` section: `name` (a STAGE_FUSIONS member), `stages` (1-based stages that get a
    module; default: the member's own, e.g. VLTF's 2-4, else all), and the member's options."""

    def __init__(self, section: dict[str, Any], infos: list[StageInfo], where: str = "encoder.stage_fusion") -> None:
        super().__init__()
        hook, params = _split(section, where)
        cfg = STAGE_FUSIONS.make_config(hook.name, params, where)
        cls = STAGE_FUSIONS.get(hook.name).obj
        n = len(infos)
        stages = hook.stages if hook.stages is not None else (cls.default_stages or tuple(range(1, n + 1)))
        if not stages or any(not 1 <= s <= n for s in stages) or list(stages) != sorted(set(stages)):
            raise RisbenchError(f"{where}.stages {list(stages)} must be increasing stage numbers in 1..{n}")
        self.name = hook.name
        self.stages = tuple(stages)
        self.cfg = cfg
        self.fusions = nn.ModuleDict({str(s): cls(cfg, infos[s - 1]) for s in self.stages})

    def has(self, stage: int) -> bool:
        """Whether `stage` (1-based) gets a fusion module."""
        return str(stage) in self.fusions

    def forward(self, stage: int, x: Tensor, grid: tuple[int, int], words: Tensor, pad: Tensor) -> FusionOutput:
        """Run stage `stage`'s fusion (1-based), or pass everything through where it has none."""
        if not self.has(stage):
            return FusionOutput(x, x, words)
        return self.fusions[str(stage)](x, grid, words, pad)
