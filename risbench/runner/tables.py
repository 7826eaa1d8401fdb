"""`risbench table`: collect run outputs into one tidy frame, pivot to the paper's layout, export.

collect(runs_dir)  -> tidy DataFrame, one row per run x split x metric (metrics.json and flops.json)
build_table(...)   -> TableData: rows = variants in the experiment's order, columns Params, GFLOPs, P@X,
                      oIoU, mIoU as mean and std over seeds, the paper's numbers beside them, and the
                      statistics (risbench.runner.table_stats): t-intervals over seeds, differences from
                      the reference row with paired bootstrap intervals
Exports (CSV, Markdown, LaTeX) and the caption live in risbench.runner.export.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from risbench.config import PROJECT_ROOT, registry_dir
from risbench.errors import RisbenchError, UnknownNameError, unknown_name_message
from risbench.runner.columns import COLUMNS, DECIMALS, HIGHER_IS_BETTER
from risbench.runner.stats import DEFAULT_REPLICATES
from risbench.runner.table_stats import TableStats, compute_stats, resolve_reference
from risbench.train.rundir import read_result

PAPER_CSV_COLUMNS = {"params": "params_m"}  # our column -> registry/paper_tables.csv column


# ---------------------------------------------------------------- reading run outputs


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


def split_metrics(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-split {metric: value} from a metrics.json, whatever its nesting ({split: {...}} or
    {'splits'|'metrics': {split: {...}}}); values are percent, as risbench.train.metrics reports them."""
    for key in ("splits", "metrics", "results"):
        if isinstance(data.get(key), dict) and any(isinstance(v, dict) for v in data[key].values()):
            data = data[key]
            break
    out: dict[str, dict[str, float]] = {}
    for split, values in data.items():
        if not isinstance(values, dict):
            continue
        found = {}
        for name, value in values.items():
            key = metric_key(str(name))
            if key and isinstance(value, (int, float)) and not isinstance(value, bool):
                found[key] = float(value)
        if found:
            out[split] = found
    return out


def _flops_values(data: dict[str, Any]) -> dict[str, float]:
    """{'params.total': M, 'gflops.total': G, 'params.fpn': M, ...} from a flops.json."""
    out: dict[str, float] = {}

    def put(part: str, entry: Any) -> None:
        if not isinstance(entry, dict):
            return
        params = entry.get("params", entry.get("params_total"))
        if isinstance(params, dict):
            params = params.get("total")
        flops = entry.get("flops", entry.get("flops_total"))
        if isinstance(params, (int, float)):
            out[f"params.{part}"] = params / 1e6
        elif isinstance(entry.get("params_m"), (int, float)):
            out[f"params.{part}"] = float(entry["params_m"])
        if isinstance(flops, (int, float)):
            out[f"gflops.{part}"] = flops / 1e9
        elif isinstance(entry.get("gflops"), (int, float)):
            out[f"gflops.{part}"] = float(entry["gflops"])

    comps = data.get("components") if isinstance(data.get("components"), dict) else data
    for part in ("encoder", "fpn", "decoder"):
        put(part, comps.get(part))
    put("total", data.get("total") if isinstance(data.get("total"), dict) else data)
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def run_meta(run_dir: Path) -> dict[str, Any] | None:
    meta = read_json(run_dir / "run.json")
    if meta is None and (run_dir / "config.yaml").is_file():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        name = run_dir.name
        m = re.fullmatch(r"(.+)-s(\d+)-[0-9a-f]{6}", name)
        meta = {"variant": m.group(1) if m else name, "seed": int(m.group(2)) if m else cfg.get("seed", 0)}
    return meta


def collect(runs_dir: str | Path) -> pd.DataFrame:
    """One tidy row per run x split x metric for every run directory under `runs_dir` (any depth).
    Columns: experiment, run_id, variant, seed, index, split, metric, value, mtime, run_dir."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RisbenchError(f"runs directory not found: {runs_dir}")
    rows = []
    run_dirs = sorted({p.parent for name in ("metrics.json", "flops.json") for p in runs_dir.rglob(name)})
    for run_dir in run_dirs:
        meta = run_meta(run_dir) or {}
        base = {
            "experiment": meta.get("experiment", run_dir.parent.name),
            "run_id": run_dir.name,
            "variant": str(meta.get("variant", run_dir.name)),
            "seed": int(meta.get("seed", 0)),
            "index": int(meta.get("index", 10_000)),
            "run_dir": str(run_dir),
        }
        metrics_path = run_dir / "metrics.json"
        metrics = read_result(metrics_path) if metrics_path.is_file() else None
        if metrics:
            mtime = metrics_path.stat().st_mtime
            for split, values in split_metrics(metrics).items():
                for metric, value in values.items():
                    rows.append({**base, "split": split, "metric": metric, "value": value, "mtime": mtime})
        flops_path = run_dir / "flops.json"
        flops = read_result(flops_path) if flops_path.is_file() else None
        if flops:
            mtime = flops_path.stat().st_mtime
            for metric, value in _flops_values(flops).items():
                rows.append({**base, "split": "", "metric": metric, "value": value, "mtime": mtime})
    cols = ["experiment", "run_id", "variant", "seed", "index", "split", "metric", "value", "mtime", "run_dir"]
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------- pivoting


@dataclass
class TableData:
    """The paper-shaped table: means/stds per variant and column, seeds per variant, paper numbers."""

    columns: list[str]
    mean: pd.DataFrame  # index = variant (row order), columns = `columns`
    std: pd.DataFrame
    n: pd.Series  # seeds per variant (runs with metrics)
    paper: pd.DataFrame  # index = variant, columns = paper columns present (subset of COLUMNS)
    paper_variant: dict[str, str] = field(default_factory=dict)
    caption: str = ""
    label: str = ""
    stats: TableStats | None = None  # intervals and differences from the reference row
    count: pd.DataFrame | None = None  # seeds with a value, per variant x column

    def best(self, decimals: dict[str, int] | None = None) -> dict[str, tuple[set[str], set[str]]]:
        """Per ranked column: (variants with the best value, variants with the second best), at display
        precision (`decimals` per column where a format prints fewer), from our means (ties share a rank)."""
        out = {}
        for col in self.columns:
            if col not in HIGHER_IS_BETTER:
                continue
            values = self.mean[col].dropna().round((decimals or {}).get(col, DECIMALS.get(col, 2)))
            distinct = sorted(set(values), reverse=True)
            first = {v for v, x in values.items() if distinct and x == distinct[0]}
            second = {v for v, x in values.items() if len(distinct) > 1 and x == distinct[1]}
            out[col] = (first, second)
        return out


def load_paper_table(mirrors: str, split: str | None = None) -> pd.DataFrame:
    """The rows of one paper table from registry/paper_tables.csv, indexed by variant. A table whose rows name
    a `dataset` and `split` (DETRIS's README: one row per dataset x split) keeps the rows of `split` only, each
    also reachable as "variant / dataset"; the Shared-RIS tables leave both empty (one split: RefCOCO+ val)."""
    path = registry_dir() / "paper_tables.csv"
    if not path.is_file():
        path = PROJECT_ROOT / "registry" / "paper_tables.csv"
    if not path.is_file():
        raise RisbenchError(f"paper numbers not found: {path}")
    frame = pd.read_csv(path, dtype={"table": str, "variant": str})
    rows = frame[frame["table"] == str(mirrors)]
    if rows.empty:
        raise UnknownNameError(unknown_name_message("paper table", str(mirrors), sorted(set(frame["table"]))))
    keyed = []
    if "split" in rows.columns and rows["split"].notna().any():
        rows = rows[rows["split"].isna() | (rows["split"] == split)]
        dataset = rows["dataset"].fillna("")
        keyed = [rows[dataset != ""].assign(variant=rows["variant"] + " / " + dataset)]
    # a variant named twice (Table VI: CGFormer on two encoders) is also reachable as "variant (encoder)"
    both = rows.assign(variant=rows["variant"] + " (" + rows["encoder"] + ")")
    return pd.concat([*keyed, rows, both]).drop_duplicates("variant", keep="first").set_index("variant")


def build_table(
    tidy: pd.DataFrame,
    meta: dict[str, Any] | None = None,
    run_ids: list[str] | None = None,
    *,
    reference: str | None = None,
    replicates: int = DEFAULT_REPLICATES,
) -> TableData:
    """Pivot a tidy frame to the paper's layout. `meta` is the experiment's layout (experiment.json:
    variants, table spec); `run_ids` restricts the table to those runs (the current expansion);
    `reference` overrides the table's reference row, `replicates` the bootstrap's B (0: no intervals)."""
    meta = meta or {}
    spec = meta.get("table") or {}
    split = spec.get("split", "val")
    cost = spec.get("cost", "total")
    columns = [c for c in spec.get("columns", COLUMNS) if c in COLUMNS]
    if run_ids is not None:
        tidy = tidy[tidy["run_id"].isin(run_ids)]
    else:
        tidy = _latest_per_variant_seed(tidy)
    order = list(meta.get("variants") or [])
    seen = list(dict.fromkeys(tidy.sort_values(["index", "variant"])["variant"]))
    variants = order + [v for v in seen if v not in order]
    ref = resolve_reference(spec, variants, reference)

    want = tidy[((tidy["split"] == split) & tidy["metric"].isin(HIGHER_IS_BETTER))]
    cost_rows = tidy[(tidy["split"] == "") & tidy["metric"].isin([f"params.{cost}", f"gflops.{cost}"])].copy()
    cost_rows["metric"] = cost_rows["metric"].str.split(".").str[0]
    both = pd.concat([want, cost_rows])
    grouped = both.groupby(["variant", "metric"])["value"]
    mean = grouped.mean().unstack().reindex(index=variants, columns=columns)
    std = grouped.std(ddof=1).unstack().reindex(index=variants, columns=columns)
    count = grouped.count().unstack().reindex(index=variants, columns=columns).fillna(0).astype(int)
    n = want.groupby("variant")["seed"].nunique().reindex(variants).fillna(0).astype(int)
    if len(mean.columns) and mean.isna().all(axis=None):
        mean = mean.astype(float)
    rows_map = spec.get("rows") or {}
    paper = pd.DataFrame(index=variants)
    paper_variant: dict[str, str] = {}
    if spec.get("mirrors"):
        tables = {str(spec["mirrors"]): load_paper_table(spec["mirrors"], split)}
        for v in variants:
            pv = rows_map.get(v, v)
            ptable = tables[str(spec["mirrors"])]
            # "<table>: <variant>" takes the row from another paper table (RISAM's ablations span Tables 2-6)
            other, sep, rest = pv.partition(": ")
            if sep and other != str(spec["mirrors"]):
                if other not in tables:
                    tables[other] = load_paper_table(other, split)
                ptable, pv = tables[other], rest
            elif sep:
                pv = rest
            if pv in ptable.index:
                paper_variant[v] = rows_map.get(v, v)
                for col in columns:
                    src = PAPER_CSV_COLUMNS.get(col, col)
                    paper.loc[v, col] = ptable.loc[pv, src] if src in ptable.columns else math.nan
        paper = paper.reindex(columns=[c for c in columns if c in paper.columns]).astype(float)
        paper = paper.dropna(axis=1, how="all")
    return TableData(
        columns=columns,
        mean=mean.astype(float),
        std=std.astype(float),
        n=n,
        paper=paper,
        paper_variant=paper_variant,
        caption=meta.get("caption", ""),
        label=f"tab:{meta.get('name', 'risbench')}",
        stats=compute_stats(both, variants, columns, spec, ref, replicates),
        count=count,
    )


def _latest_per_variant_seed(tidy: pd.DataFrame) -> pd.DataFrame:
    """Without an explicit run list, keep one run per (experiment, variant, seed): the newest."""
    if tidy.empty:
        return tidy
    last = tidy.groupby(["experiment", "variant", "seed", "run_id"])["mtime"].max().reset_index()
    last = last.sort_values("mtime").drop_duplicates(["experiment", "variant", "seed"], keep="last")
    return tidy[tidy["run_id"].isin(last["run_id"])]


def table_for_dir(
    runs_dir: str | Path,
    run_ids: list[str] | None = None,
    columns: list[str] | None = None,
    *,
    reference: str | None = None,
    replicates: int = DEFAULT_REPLICATES,
) -> TableData:
    """Collect and pivot one experiment's run folder (runs/<experiment>/), using its experiment.json;
    `columns` narrows the table's columns (e.g. the cost columns only); `reference` and `replicates` as
    in `build_table`."""
    runs_dir = Path(runs_dir)
    meta = read_json(runs_dir / "experiment.json") or {"name": runs_dir.name}
    if columns is not None:
        spec = dict(meta.get("table") or {})
        spec["columns"] = [c for c in spec.get("columns", COLUMNS) if c in columns]
        meta = {**meta, "table": spec}
    tidy = collect(runs_dir)
    if tidy.empty:
        raise RisbenchError(f"{runs_dir}: no metrics.json or flops.json found under it")
    from risbench.runner.export import caption_for

    table = build_table(tidy, meta, run_ids, reference=reference, replicates=replicates)
    table.caption = caption_for(meta, runs_dir, run_ids, table.stats)
    return table
