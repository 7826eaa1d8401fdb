"""Run folders as one tidy frame: `collect(runs_dir)` gives a row per run x split x metric from each run's
metrics.json and flops.json (read through risbench.results), named by its run.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from risbench.errors import RisbenchError
from risbench.results import FLOPS_FILE, METRICS_FILE, RUN_FILE, Flops, Metrics, RunInfo


def metric_key(name: str) -> str | None:
    """Normalise a metric name: 'oIoU' -> 'oiou', 'P@0.5' / 'p50' / 'prec@0.5' -> 'p50', the R-RIS code's
    'rris_r' / 'rris_rIoU' -> 'rris_r' / 'rris_riou'; None if unknown."""
    k = name.strip().lower()
    if k in ("rris_r", "rris_riou"):
        return k
    if k in ("oiou", "overall_iou", "ciou"):
        return "oiou"
    if k in ("miou", "mean_iou"):
        return "miou"
    m = re.fullmatch(r"(?:p|prec|precision)\s*[@_]?\s*(0?\.\d+|\d+)", k)
    if m:
        t = float(m.group(1))
        t = t * 100 if t <= 1 else t
        return f"p{int(round(t))}"
    return None


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """{metric_key: value} of the entries of `values` that are a known metric with a number."""
    out = {}
    for name, value in values.items():
        key = metric_key(str(name))
        if key and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def split_metrics(metrics: Metrics) -> dict[str, dict[str, float]]:
    """Per-split {metric: value} of a metrics.json, keyed by `metric_key` ('oiou', 'p50', ...); values are
    percent, as risbench.train.metrics reports them; `by_kind` gives `<key>@<kind>` (e.g. 'p50@shape').
    Entries that are not a metric (threshold, counts) are left out."""
    out: dict[str, dict[str, float]] = {}
    for split, values in metrics.splits.items():
        if not isinstance(values, dict):
            continue
        found = _numbers(values)
        for kind, per_kind in (values.get("by_kind") or {}).items():
            if isinstance(per_kind, dict):
                found.update({f"{key}@{kind}": v for key, v in _numbers(per_kind).items()})
        if found:
            out[split] = found
    return out


def _flops_values(flops: Flops) -> dict[str, float]:
    """{'params.total': M, 'gflops.total': G, 'params.fpn': M, ...} from a flops.json."""
    out: dict[str, float] = {}
    for part in ("encoder", "fpn", "decoder", "total"):
        params, count = flops.count(part)
        if params is not None:
            out[f"params.{part}"] = params / 1e6
        if count is not None:
            out[f"gflops.{part}"] = count / 1e9
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    """An experiment's experiment.json (the layout the sweep wrote), or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def run_meta(run_dir: Path) -> RunInfo | None:
    """Which experiment row a run folder is: its run.json, else (a run trained outside a sweep) the
    variant and seed in its folder name `<variant>-s<seed>-<hash>`; None for a folder without a config."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_FILE).is_file():
        return RunInfo.read(run_dir / RUN_FILE)
    if not (run_dir / "config.yaml").is_file():
        return None
    m = re.fullmatch(r"(.+)-s(\d+)-[0-9a-f]{6}", run_dir.name)
    if m:
        return RunInfo(variant=m.group(1), seed=int(m.group(2)))
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return RunInfo(variant=run_dir.name, seed=cfg.get("seed", 0))


def collect(runs_dir: str | Path) -> pd.DataFrame:
    """One tidy row per run x split x metric for every run directory under `runs_dir` (any depth).
    Columns: experiment, run_id, variant, seed, index, split, metric, value, mtime, run_dir."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RisbenchError(f"runs directory not found: {runs_dir}")
    rows = []
    run_dirs = sorted({p.parent for name in (METRICS_FILE, FLOPS_FILE) for p in runs_dir.rglob(name)})
    for run_dir in run_dirs:
        meta = run_meta(run_dir)
        base = {
            "experiment": (meta and meta.experiment) or run_dir.parent.name,
            "run_id": run_dir.name,
            "variant": str(meta.variant) if meta else run_dir.name,
            "seed": int(meta.seed) if meta else 0,
            "index": int(meta.index) if meta and meta.index is not None else 10_000,
            "run_dir": str(run_dir),
        }
        metrics_path = run_dir / METRICS_FILE
        if metrics_path.is_file():
            metrics = Metrics.read(metrics_path)
            mtime = metrics_path.stat().st_mtime
            for split, values in split_metrics(metrics).items():
                for metric, value in values.items():
                    rows.append({**base, "split": split, "metric": metric, "value": value, "mtime": mtime})
        flops_path = run_dir / FLOPS_FILE
        if flops_path.is_file():
            flops = Flops.read(flops_path)
            mtime = flops_path.stat().st_mtime
            for metric, value in _flops_values(flops).items():
                rows.append({**base, "split": "", "metric": metric, "value": value, "mtime": mtime})
    cols = ["experiment", "run_id", "variant", "seed", "index", "split", "metric", "value", "mtime", "run_dir"]
    return pd.DataFrame(rows, columns=cols)
