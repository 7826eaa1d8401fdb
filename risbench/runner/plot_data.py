"""The numbers behind the plots (risbench.runner.plots), as tidy frames read from run folders and from a
table: learning curves, IoU by object size (the paper's Fig. 6), an ablation metric with its seed
interval, cost against accuracy. No matplotlib here, so every frame can be tested on its own."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from risbench.errors import RisbenchError
from risbench.results import METRICS_FILE, Metrics
from risbench.runner.collect import run_meta
from risbench.runner.tables import TableData
from risbench.train.curves import read_curve


def curve_frame(run_dirs: list[Path], names: list[str] | None = None) -> pd.DataFrame:
    """One row per run x logged validation: name, step, minutes, oIoU, mIoU. Runs that logged no
    validation are left out (an empty frame when none did)."""
    names = names or [Path(d).name for d in run_dirs]
    if len(names) != len(run_dirs):
        raise RisbenchError(f"--name given {len(names)} times for {len(run_dirs)} runs; give one per run or none")
    parts = []
    for name, run_dir in zip(names, run_dirs, strict=True):
        try:
            curve = read_curve(run_dir)
        except RisbenchError:
            continue
        parts.append(
            pd.DataFrame(
                {"name": name, "step": curve["step"], "minutes": curve["train_s"] / 60, "oIoU": curve["oIoU"],
                 "mIoU": curve["mIoU"]}
            )
        )  # fmt: skip
    columns = ["name", "step", "minutes", "oIoU", "mIoU"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def _bucket_low(name: str) -> float:
    """'1-5%' -> 1.0 (the buckets' order on the axis)."""
    m = re.match(r"([\d.]+)", name)
    return float(m.group(1)) if m else math.inf


def size_frame(run_dirs: list[Path], split: str = "val") -> pd.DataFrame:
    """One row per run x size bucket of its metrics.json (`iou_by_size` of `split`): variant, seed,
    bucket, low (the bucket's lower bound, percent of the image), num, mIoU, oIoU."""
    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir) / METRICS_FILE
        by_size = (Metrics.read(path).splits.get(split) or {}).get("iou_by_size") if path.is_file() else None
        if not isinstance(by_size, dict):
            continue
        meta = run_meta(Path(run_dir))
        for bucket, entry in by_size.items():
            rows.append(
                {"variant": meta.variant if meta else Path(run_dir).name, "seed": meta.seed if meta else 0,
                 "bucket": bucket, "low": _bucket_low(bucket), "num": entry.get("num", 0),
                 "mIoU": entry.get("mIoU"), "oIoU": entry.get("oIoU")}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=["variant", "seed", "bucket", "low", "num", "mIoU", "oIoU"])


def size_summary(frame: pd.DataFrame, metric: str = "mIoU", variants: list[str] | None = None) -> pd.DataFrame:
    """Per variant x bucket: the mean of `metric` over the seeds that have the bucket (a seed with no
    target of that size has no value there), the seeds averaged, and the sentences per seed. Rows in
    bucket order, then in `variants`' order."""
    known = frame.dropna(subset=[metric])
    out = known.groupby(["variant", "bucket", "low"], as_index=False).agg(
        value=(metric, "mean"), seeds=(metric, "size"), num=("num", "mean")
    )
    order = {v: i for i, v in enumerate(variants or list(dict.fromkeys(frame["variant"])))}
    out["order"] = out["variant"].map(lambda v: order.get(v, len(order)))
    return out.sort_values(["low", "order"]).drop(columns="order").reset_index(drop=True)


def metric_frame(table: TableData, metric: str) -> pd.DataFrame:
    """Per variant with a value: mean, the 95% t-interval over seeds (low / high; NaN with one seed) and
    the seeds, in the table's row order."""
    rows = []
    for v in table.mean.index:
        mean = table.mean.loc[v, metric]
        if math.isnan(mean):
            continue
        low = high = math.nan
        if table.stats is not None and metric in table.stats.ci_low.columns:
            low, high = table.stats.ci_low.loc[v, metric], table.stats.ci_high.loc[v, metric]
        seeds = int(table.count.loc[v, metric]) if table.count is not None else int(table.n.get(v, 0))
        rows.append({"variant": v, "mean": mean, "low": low, "high": high, "seeds": seeds})
    return pd.DataFrame(rows, columns=["variant", "mean", "low", "high", "seeds"])


def cost_frame(table: TableData, cost: str = "gflops", metric: str = "oiou") -> pd.DataFrame:
    """Per variant with both numbers: the cost (mean over its runs) and the metric with its interval."""
    acc = metric_frame(table, metric)
    if cost not in table.mean.columns:
        return acc.iloc[0:0].assign(cost=pd.Series(dtype=float))  # no cost column: nothing to plot
    acc["cost"] = [table.mean.loc[v, cost] for v in acc["variant"]]
    return acc.dropna(subset=["cost"]).reset_index(drop=True)
