"""Learning curves: the validations a run logged while training (train_log.jsonl), several runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from risbench.errors import RisbenchError


def read_curve(run_dir: Path) -> pd.DataFrame:
    """One row per logged validation: step, training seconds so far, val oIoU and mIoU (percent)."""
    log = Path(run_dir) / "train_log.jsonl"
    if not log.exists():
        raise RisbenchError(f"{log} not found: expected a run folder written by `risbench train`")
    rows = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if "val" in entry:
            val = entry["val"]
            rows.append(
                {
                    "step": entry["step"],
                    "train_s": entry["train_seconds"],
                    "oIoU": val["oIoU"],
                    "mIoU": val["mIoU"],
                    "sentences": val["num_sentences"],
                    "split": val["split"],
                }
            )
    if not rows:
        raise RisbenchError(f"{log} has no validations; train with train.val_every > 0 to log a learning curve")
    return pd.DataFrame(rows)


def curves_markdown(run_dirs: list[Path], names: list[str] | None = None) -> str:
    """A Markdown table: one row per step, per run its val oIoU / mIoU and training minutes so far."""
    names = names or [Path(d).name for d in run_dirs]
    if len(names) != len(run_dirs):
        raise RisbenchError(f"--name given {len(names)} times for {len(run_dirs)} runs; give one per run or none")
    merged: pd.DataFrame | None = None
    notes = []
    for name, run_dir in zip(names, run_dirs, strict=True):
        curve = read_curve(run_dir)
        notes.append(
            f"- {name}: `{run_dir}`, split {curve['split'].iloc[0]}, first {curve['sentences'].iloc[0]} sentences"
        )
        part = pd.DataFrame(
            {
                "step": curve["step"],
                f"{name} min": (curve["train_s"] / 60).round(1),
                f"{name} oIoU": curve["oIoU"].round(2),
                f"{name} mIoU": curve["mIoU"].round(2),
            }
        )
        merged = part if merged is None else merged.merge(part, on="step", how="outer")
    assert merged is not None
    merged = merged.sort_values("step").astype(object).where(merged.notna(), "")
    header = "| " + " | ".join(merged.columns) + " |"
    lines = [header, "|" + "---:|" * len(merged.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in merged.itertuples(index=False)]
    intro = "Validation during training (threshold and resolution as each run's eval config; min = training minutes)"
    return "\n".join([intro, "", *notes, "", *lines]) + "\n"
