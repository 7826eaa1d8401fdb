"""Loading official BEiT-3 checkpoints (unilm beit3_*.pth) into `Beit3Encoder`, strictly.

Rules (docs/decisions.md §1 BEiT-3; the interpolation follows unilm beit3/utils.py `load_model_and_may_interpolate`):
- the file is read with `torch.load(..., weights_only=True)`; the state dict is taken from "model",
  else "module", else the top level;
- encoder keys carry the prefix "beit3." (stripped); a state dict with no "beit3." key at all is read
  as an already-stripped encoder state dict;
- keys outside the prefix (pretraining heads: vision_head, language_head, logit_scale, mlm heads...)
  are ignored, listed in the report and logged, never silently dropped;
- `encoder.embed_positions.A.weight` is resized when the checkpoint grid differs from ours: its first
  3 rows (2 fairseq offset rows + the CLS position) are kept, the grid rows are resized bicubically;
- any missing encoder key, unexpected key inside the prefix or other shape mismatch raises RisbenchError.
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import RisbenchError

logger = logging.getLogger(__name__)

PREFIX = "beit3."
VISION_POS_KEY = "encoder.embed_positions.A.weight"
# rows of the vision position table before the patch grid: 2 fairseq offset rows + the CLS position
VISION_POS_EXTRA_ROWS = 3


@dataclass
class LoadReport:
    """What `load_beit3_weights` did: where from, how many tensors, what was ignored or resized."""

    path: str
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)
    interpolated: str | None = None  # e.g. "encoder.embed_positions.A.weight: 14x14 -> 30x30"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict stored in `path` ({"model": sd}, {"module": sd} or a plain sd)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RisbenchError(f"encoder beit3: weights file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RisbenchError(f"encoder beit3: cannot read weights {path} as a torch state dict: {first}") from err
    if not isinstance(ckpt, dict):
        raise RisbenchError(f"encoder beit3: {path} holds a {type(ckpt).__name__}, not a state dict")
    for key in ("model", "module"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def split_encoder_keys(state: dict[str, object]) -> tuple[dict[str, object], list[str]]:
    """(encoder entries with the prefix stripped, sorted keys outside the encoder)."""
    if not any(k.startswith(PREFIX) for k in state):
        return dict(state), []
    encoder = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    ignored = sorted(k for k in state if not k.startswith(PREFIX))
    return encoder, ignored


def interpolate_vision_positions(table: Tensor, num_patches: int) -> Tensor:
    """Resize a (3 + g*g, d) vision position table to (3 + num_patches, d): rows 0-2 kept, grid bicubic."""
    src = table.shape[0] - VISION_POS_EXTRA_ROWS
    g_old, g_new = math.isqrt(max(src, 0)), math.isqrt(num_patches)
    if src <= 0 or g_old * g_old != src or g_new * g_new != num_patches:
        raise RisbenchError(
            f"encoder beit3: cannot interpolate {PREFIX}{VISION_POS_KEY} of shape {tuple(table.shape)} to "
            f"{VISION_POS_EXTRA_ROWS + num_patches} rows: the patch grids are not square"
        )
    extra, grid = table[:VISION_POS_EXTRA_ROWS], table[VISION_POS_EXTRA_ROWS:]
    dim = table.shape[1]
    grid = grid.float().reshape(1, g_old, g_old, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(g_new * g_new, dim).to(table.dtype)
    return torch.cat([extra, grid], dim=0)


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_beit3_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Load an official BEiT-3 checkpoint into `model` (a Beit3Encoder); strict, see the module doc."""
    state = read_state_dict(path)
    encoder, ignored = split_encoder_keys(state)
    report = LoadReport(path=str(path), ignored=ignored)
    own = model.state_dict()

    not_tensors = sorted(k for k, v in encoder.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise RisbenchError(f"encoder beit3: {path}: non-tensor entries under '{PREFIX}': {_describe(not_tensors)}")
    missing = sorted(set(own) - set(encoder))
    unexpected = sorted(set(encoder) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing encoder key(s) {_describe([PREFIX + k for k in missing])}")
        if unexpected:
            parts.append(f"unexpected key(s) {_describe([PREFIX + k for k in unexpected])}")
        stem_keys = [k for k in missing + unexpected if k.startswith("vision_embed.stem.")]
        if stem_keys:  # the one architecture option that changes the key set: say which side has what
            has = "the checkpoint" if stem_keys[0] in unexpected else "the model"
            other = "the model" if has == "the checkpoint" else "the checkpoint"
            fix = "conv" if has == "the checkpoint" else "patch"
            parts.append(f"{has} has the convolutional stem and {other} the patch embedding: set encoder.stem={fix}")
        raise RisbenchError(f"encoder beit3: {path} does not match the BEiT-3 layout: {'; '.join(parts)}")

    pos = encoder[VISION_POS_KEY]
    want = own[VISION_POS_KEY].shape
    if pos.shape != want and pos.ndim == 2 and pos.shape[1] == want[1]:
        old_grid = math.isqrt(max(pos.shape[0] - VISION_POS_EXTRA_ROWS, 0))
        encoder[VISION_POS_KEY] = interpolate_vision_positions(pos, want[0] - VISION_POS_EXTRA_ROWS)
        new_grid = math.isqrt(want[0] - VISION_POS_EXTRA_ROWS)
        report.interpolated = f"{VISION_POS_KEY}: {old_grid}x{old_grid} -> {new_grid}x{new_grid}"
        logger.info("beit3: interpolated %s", report.interpolated)

    mismatched = [
        f"{PREFIX}{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sorted(encoder.items())
        if v.shape != own[k].shape
    ]
    if mismatched:
        raise RisbenchError(f"encoder beit3: {path}: shape mismatch for {_describe(mismatched, 4)}")

    model.load_state_dict(encoder, strict=True)
    report.loaded = len(encoder)
    logger.info("beit3: loaded %d tensors from %s", report.loaded, path)
    if ignored:
        logger.warning("beit3: ignored %d checkpoint key(s) outside the encoder: %s", len(ignored), ignored)
    return report
