"""`risbench figure`: qualitative grids (one row per sentence: the image, the ground truth and each run's
prediction, with the expression and per-sentence IoU) and attention maps from the text tokens to the
image patches (one panel per token, as Shared-RIS Figs. 7-8), drawn with matplotlib, PNG + PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from risbench.errors import RisbenchError
from risbench.runner.plots import save
from risbench.train.figure_data import Attention, Sample
from risbench.train.overlay import draw_mask, scale_factor, upscale
from risbench.train.sentences import per_sentence_path, read_per_sentence

PICKS = ("first", "disagree")


def disagreement(run_dirs: list[Path], split: str) -> pd.DataFrame:
    """Per sentence evaluated by every run: the runs' IoU (percent, one column per run) and their spread
    (max − min), from the per-sentence files; largest spread first, ties in sentence order."""
    frames = []
    for i, run_dir in enumerate(run_dirs):
        frame = read_per_sentence(per_sentence_path(run_dir, split))
        if frame is None:
            raise RisbenchError(
                f"{run_dir}: no per_sentence.{split}.csv.gz; write it with `risbench eval {run_dir} --split {split}`"
            )
        iou = 100 * frame["inter"] / frame["union"].where(frame["union"] > 0)
        iou = iou.where(frame["union"] > 0, 100.0 * (frame["inter"] == 0))  # empty-vs-empty counts as right
        frames.append(pd.Series(iou.to_numpy(), index=frame["index"].to_numpy(), name=f"run{i}"))
    table = pd.concat(frames, axis=1, join="inner")
    table["spread"] = table.max(axis=1) - table.min(axis=1)
    return table.rename_axis("index").reset_index().sort_values(["spread", "index"], ascending=[False, True])


def pick_sentences(run_dirs: list[Path], split: str, n: int, pick: str) -> list[int]:
    """`n` sentence indices: the first ones, or those where the runs' IoU differs most."""
    if pick not in PICKS:
        raise RisbenchError(f"--pick must be one of {', '.join(PICKS)}, got '{pick}'")
    if n < 1:
        raise RisbenchError(f"-n must be at least 1, got {n}")
    if pick == "first":
        return list(range(n))
    if len(run_dirs) < 2:
        raise RisbenchError("--pick disagree needs two runs or more to compare")
    return [int(i) for i in disagreement(run_dirs, split)["index"].head(n)]


def _panel(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    _style(ax, title)


def _style(ax, title: str) -> None:
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def grid_figure(
    samples: list[Sample], names: list[str], masks: list[list[np.ndarray]], ious: list[list[float]], stem: Path
) -> list[Path]:
    """One row per sentence: the image (the expression under it), the ground truth and each run's
    prediction, outlined in a colour that contrasts with the object, with the run's IoU."""
    cols = 2 + len(names)
    fig = Figure(figsize=(1.9 * cols, 2.25 * len(samples)), layout="constrained")
    axes = fig.subplots(len(samples), cols, squeeze=False)
    for row, s in enumerate(samples):
        factor = scale_factor(s.rgb.shape[:2], 256)
        big, gt = upscale(s.rgb, s.gt, factor)
        _panel(axes[row, 0], big, f"#{s.index}")
        axes[row, 0].set_xlabel(f'"{s.expression}"', fontsize=8, wrap=True)
        _panel(axes[row, 1], draw_mask(big, gt), "ground truth" if s.exists else "ground truth (no target)")
        for col, name in enumerate(names):
            _, pred = upscale(s.rgb, masks[col][row], factor)
            _panel(axes[row, 2 + col], draw_mask(big, pred), f"{name}: IoU {ious[col][row]:.1f}")
    return save(fig, stem)


def _upsample(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (h, w) map stretched to `shape` (nearest; patch boundaries stay visible, as in the papers)."""
    rows = (np.arange(shape[0]) * m.shape[0] // shape[0]).clip(0, m.shape[0] - 1)
    cols = (np.arange(shape[1]) * m.shape[1] // shape[1]).clip(0, m.shape[1] - 1)
    return m[rows][:, cols]


def attention_figure(att: Attention, layer: str | None, stem: Path) -> list[Path]:
    """The image with the prediction, then one panel per token: its attention on the patches of `layer`
    (default: the last kept layer), normalised per token, over the image."""
    names = list(att.maps)
    layer = layer or names[-1]
    if layer not in att.maps:
        raise RisbenchError(f"--layer '{layer}' is not kept; kept: {', '.join(names)}")
    maps = att.maps[layer]
    s = att.sample
    factor = scale_factor(s.rgb.shape[:2], 256)
    big, pred = upscale(s.rgb, att.mask, factor)
    cols = min(6, len(att.tokens) + 1)
    rows = -(-(len(att.tokens) + 1) // cols)
    fig = Figure(figsize=(1.9 * cols, 2.0 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    _panel(axes[0], draw_mask(big, pred), "prediction")
    for ax, token, m in zip(axes[1:], att.tokens, maps, strict=False):
        heat = _upsample(m / max(float(m.max()), 1e-12), big.shape[:2])
        ax.imshow(big, interpolation="nearest")
        ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="nearest")
        _style(ax, f"{token} (max {100 * float(m.max()):.1f}%)")
    for ax in axes[len(att.tokens) + 1 :]:
        ax.axis("off")
    fig.suptitle(f'"{s.expression}" (#{s.index}), text→patch attention, {layer}', fontsize=9)
    return save(fig, stem)
