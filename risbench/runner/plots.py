"""Figures for a paper or a talk, drawn with matplotlib (object API, Agg canvas: no display needed) and
written as PNG (200 dpi) and PDF side by side: learning curves of several runs, IoU by object size
across an experiment's variants (Shared-RIS Fig. 6), an ablation metric by variant with its 95% seed
interval as error bars, cost against accuracy. The numbers come from risbench.runner.plot_data."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from risbench.io import atomic_write_path
from risbench.runner import plot_data
from risbench.runner.collect import run_meta
from risbench.runner.columns import label as column_label
from risbench.runner.tables import TableData

DPI = 200
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")  # Okabe-Ito


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.pdf atomically; returns both paths."""
    stem = Path(stem)
    out = []
    for ext in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{ext}")
        atomic_write_path(path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=DPI, bbox_inches="tight"))
        out.append(path)
    return out


def _colours(names: list[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(dict.fromkeys(names))}


def _errors(frame: pd.DataFrame) -> list[list[float]] | None:
    """Asymmetric error bars from low / high (0 where a variant has no interval); None when none has one."""
    if frame["low"].isna().all():
        return None
    low = (frame["mean"] - frame["low"]).fillna(0).tolist()
    high = (frame["high"] - frame["mean"]).fillna(0).tolist()
    return [low, high]


def plot_curves(curves: pd.DataFrame, stem: Path, groups: dict[str, str] | None = None) -> list[Path]:
    """val oIoU and mIoU by step, one line per run; runs of one group (variant) share a colour."""
    groups = groups or {n: n for n in curves["name"]}
    colours = _colours([groups[n] for n in dict.fromkeys(curves["name"])])
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    labelled: set[str] = set()
    for name, run in curves.groupby("name", sort=False):
        group = groups[name]
        label = None if group in labelled else group
        labelled.add(group)
        for ax, metric in zip(axes, ("oIoU", "mIoU"), strict=True):
            ax.plot(run["step"], run[metric], marker="o", ms=3, lw=1.4, color=colours[group], label=label, alpha=0.85)
    for ax, metric in zip(axes, ("oIoU", "mIoU"), strict=True):
        ax.set_xlabel("training step")
        ax.set_ylabel(f"val {metric} (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, frameon=False, loc="best")
    fig.suptitle("Learning curves", fontsize=10)
    return save(fig, stem)


def plot_size(summary: pd.DataFrame, stem: Path, metric: str = "mIoU") -> list[Path]:
    """Grouped bars: `metric` by target size bucket (target area / image area), one bar per variant."""
    buckets = list(dict.fromkeys(summary["bucket"]))
    variants = list(dict.fromkeys(summary["variant"]))
    colours = _colours(variants)
    width = 0.8 / max(len(variants), 1)
    fig = Figure(figsize=(1.2 + 1.1 * len(buckets), 3.2), layout="constrained")
    ax = fig.subplots()
    for i, v in enumerate(variants):
        rows = summary[summary["variant"] == v].set_index("bucket")
        xs = [b + (i - (len(variants) - 1) / 2) * width for b in range(len(buckets))]
        ys = [rows.loc[b, "value"] if b in rows.index else math.nan for b in buckets]
        ax.bar(xs, ys, width=width * 0.95, color=colours[v], label=v)
    ax.set_xticks(range(len(buckets)), [f"{b}\n(n≈{_num(summary, b)})" for b in buckets], fontsize=8)
    ax.set_xlabel("target area / image area")
    ax.set_ylabel(f"{metric} (%), mean over seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, ncols=min(len(variants), 4))
    ax.set_title("IoU by object size", fontsize=10)
    return save(fig, stem)


def _num(summary: pd.DataFrame, bucket: str) -> int:
    return int(round(summary.loc[summary["bucket"] == bucket, "num"].max()))


def plot_metrics(table: TableData, metrics: list[str], stem: Path, reference: str | None = None) -> list[Path]:
    """One panel per metric: the mean by variant as bars, the 95% t-interval over seeds as error bars."""
    fig = Figure(figsize=(3.2 * len(metrics), 3.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        frame = plot_data.metric_frame(table, metric)
        colours = ["#999999" if v == reference else PALETTE[0] for v in frame["variant"]]
        ax.bar(frame["variant"], frame["mean"], color=colours, yerr=_errors(frame), capsize=4, ecolor="black")
        ax.set_ylabel(f"{column_label(metric)} (%)")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    seeds = sorted({int(s) for m in metrics for s in plot_data.metric_frame(table, m)["seeds"]})
    note = f"mean, bars: 95% t-interval over seeds ({'/'.join(map(str, seeds))} seeds)"
    fig.suptitle(note + (f"; grey: reference ({reference})" if reference else ""), fontsize=9)
    return save(fig, stem)


def plot_cost(table: TableData, stem: Path, cost: str = "gflops", metric: str = "oiou", scope: str = "") -> list[Path]:
    """One point per variant: cost (x) against accuracy (y), the 95% seed interval as a vertical bar."""
    frame = plot_data.cost_frame(table, cost, metric)
    fig = Figure(figsize=(4.4, 3.4), layout="constrained")
    ax = fig.subplots()
    colours = _colours(list(frame["variant"]))
    for _, row in frame.iterrows():
        err = None if math.isnan(row["low"]) else [[row["mean"] - row["low"]], [row["high"] - row["mean"]]]
        ax.errorbar(row["cost"], row["mean"], yerr=err, fmt="o", ms=6, capsize=3, color=colours[row["variant"]])
        ax.annotate(row["variant"], (row["cost"], row["mean"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(column_label(cost) + (f" ({scope})" if scope else ""))
    ax.set_ylabel(f"{column_label(metric)} (%)")
    ax.grid(alpha=0.3)
    ax.set_title("Cost against accuracy", fontsize=10)
    return save(fig, stem)


def experiment_plots(
    table: TableData, run_dirs: list[Path], out_dir: Path, *, split: str = "val", cost_scope: str = "total"
) -> list[Path]:
    """Every plot the runs have data for, under `out_dir`: curves, size, metrics (the table's Δ metrics,
    else oIoU), cost. A plot without data (no logged validation, no iou_by_size) is not written."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    metas = {Path(d).name: run_meta(Path(d)) for d in run_dirs}
    names = [Path(d).name for d in run_dirs]
    curves = plot_data.curve_frame(list(run_dirs), names)
    if not curves.empty:
        groups = {name: meta.variant if meta else name for name, meta in metas.items()}
        written += plot_curves(curves, out_dir / "curves", groups)
    sizes = plot_data.size_frame(list(run_dirs), split)
    if not sizes.dropna(subset=["mIoU"]).empty:
        written += plot_size(plot_data.size_summary(sizes, "mIoU", list(table.mean.index)), out_dir / "size")
    wanted = (table.stats.delta_columns if table.stats is not None else []) or ["oiou"]
    metrics = [m for m in wanted if m in table.mean.columns and table.mean[m].notna().any()]
    if metrics:
        reference = table.stats.reference if table.stats is not None else None
        written += plot_metrics(table, metrics, out_dir / "metrics", reference)
    if not plot_data.cost_frame(table).empty:
        written += plot_cost(table, out_dir / "cost", scope="whole model" if cost_scope == "total" else cost_scope)
    return written
