"""`risbench table`: collect run outputs into one tidy frame, pivot to the paper's layout, export.

collect(runs_dir)  -> tidy DataFrame, one row per run x split x metric (metrics.json and flops.json)
build_table(...)   -> TableData: rows = variants in the experiment's order, columns Params, GFLOPs, P@X,
                      oIoU, mIoU as mean and std over seeds, the paper's numbers beside them
to_csv / to_markdown / to_latex -> strings; write_atomic puts them on disk.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from risbench.config import PROJECT_ROOT, registry_dir
from risbench.errors import RisbenchError, UnknownNameError, unknown_name_message

COLUMNS = ("params", "gflops", "p50", "p70", "p90", "oiou", "miou")
LABELS = {
    "params": "Params (M)",
    "gflops": "GFLOPs",
    "p50": "P@0.5",
    "p70": "P@0.7",
    "p90": "P@0.9",
    "oiou": "oIoU",
    "miou": "mIoU",
}
COST = ("params", "gflops")
HIGHER_IS_BETTER = ("p50", "p70", "p90", "oiou", "miou")  # cost columns are not ranked
FORMATS = ("csv", "markdown", "latex")
PAPER_CSV_COLUMNS = {"params": "params_m"}  # our column -> registry/paper_tables.csv column
DECIMALS = {"params": 2, "gflops": 2}  # accuracy columns: 2 decimals, as the paper


# ---------------------------------------------------------------- reading run outputs


def metric_key(name: str) -> str | None:
    """Normalise a metric name: 'oIoU' -> 'oiou', 'P@0.5' / 'p50' / 'prec@0.5' -> 'p50'; None if unknown."""
    k = name.strip().lower()
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


def _split_metrics(data: dict[str, Any]) -> dict[str, dict[str, float]]:
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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _run_meta(run_dir: Path) -> dict[str, Any] | None:
    meta = _read_json(run_dir / "run.json")
    if meta is None and (run_dir / "config.yaml").is_file():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        name = run_dir.name
        m = re.fullmatch(r"(.+)-s(\d+)-[0-9a-f]{6}", name)
        meta = {"variant": m.group(1) if m else name, "seed": int(m.group(2)) if m else cfg.get("seed", 0)}
    return meta


def collect(runs_dir: str | Path) -> pd.DataFrame:
    """One tidy row per run x split x metric for every run directory under `runs_dir` (any depth).
    Columns: experiment, run_id, variant, seed, index, split, metric, value, mtime."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RisbenchError(f"runs directory not found: {runs_dir}")
    rows = []
    run_dirs = sorted({p.parent for name in ("metrics.json", "flops.json") for p in runs_dir.rglob(name)})
    for run_dir in run_dirs:
        meta = _run_meta(run_dir) or {}
        base = {
            "experiment": meta.get("experiment", run_dir.parent.name),
            "run_id": run_dir.name,
            "variant": str(meta.get("variant", run_dir.name)),
            "seed": int(meta.get("seed", 0)),
            "index": int(meta.get("index", 10_000)),
        }
        metrics_path = run_dir / "metrics.json"
        metrics = _read_json(metrics_path) if metrics_path.is_file() else None
        if metrics:
            mtime = metrics_path.stat().st_mtime
            for split, values in _split_metrics(metrics).items():
                for metric, value in values.items():
                    rows.append({**base, "split": split, "metric": metric, "value": value, "mtime": mtime})
        flops_path = run_dir / "flops.json"
        flops = _read_json(flops_path) if flops_path.is_file() else None
        if flops:
            mtime = flops_path.stat().st_mtime
            for metric, value in _flops_values(flops).items():
                rows.append({**base, "split": "", "metric": metric, "value": value, "mtime": mtime})
    cols = ["experiment", "run_id", "variant", "seed", "index", "split", "metric", "value", "mtime"]
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

    def best(self) -> dict[str, tuple[set[str], set[str]]]:
        """Per ranked column: (variants with the best value, variants with the second best), at display
        precision, computed from our means (ties share a rank)."""
        out = {}
        for col in self.columns:
            if col not in HIGHER_IS_BETTER:
                continue
            values = self.mean[col].dropna().round(DECIMALS.get(col, 2))
            distinct = sorted(set(values), reverse=True)
            first = {v for v, x in values.items() if distinct and x == distinct[0]}
            second = {v for v, x in values.items() if len(distinct) > 1 and x == distinct[1]}
            out[col] = (first, second)
        return out


def load_paper_table(mirrors: str) -> pd.DataFrame:
    """The rows of one paper table from registry/paper_tables.csv, indexed by variant."""
    path = registry_dir() / "paper_tables.csv"
    if not path.is_file():
        path = PROJECT_ROOT / "registry" / "paper_tables.csv"
    if not path.is_file():
        raise RisbenchError(f"paper numbers not found: {path}")
    frame = pd.read_csv(path, dtype={"table": str, "variant": str})
    rows = frame[frame["table"] == str(mirrors)]
    if rows.empty:
        raise UnknownNameError(unknown_name_message("paper table", str(mirrors), sorted(set(frame["table"]))))
    # a variant named twice (Table VI: CGFormer on two encoders) is also reachable as "variant (encoder)"
    both = rows.assign(variant=rows["variant"] + " (" + rows["encoder"] + ")")
    return pd.concat([rows, both]).drop_duplicates("variant", keep="first").set_index("variant")


def build_table(
    tidy: pd.DataFrame,
    meta: dict[str, Any] | None = None,
    run_ids: list[str] | None = None,
) -> TableData:
    """Pivot a tidy frame to the paper's layout. `meta` is the experiment's layout (experiment.json:
    variants, table spec); `run_ids` restricts the table to those runs (the current expansion)."""
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

    want = tidy[((tidy["split"] == split) & tidy["metric"].isin(HIGHER_IS_BETTER))]
    cost_rows = tidy[(tidy["split"] == "") & tidy["metric"].isin([f"params.{cost}", f"gflops.{cost}"])].copy()
    cost_rows["metric"] = cost_rows["metric"].str.split(".").str[0]
    both = pd.concat([want, cost_rows])
    grouped = both.groupby(["variant", "metric"])["value"]
    mean = grouped.mean().unstack().reindex(index=variants, columns=columns)
    std = grouped.std(ddof=1).unstack().reindex(index=variants, columns=columns)
    n = want.groupby("variant")["seed"].nunique().reindex(variants).fillna(0).astype(int)
    if len(mean.columns) and mean.isna().all(axis=None):
        mean = mean.astype(float)
    rows_map = spec.get("rows") or {}
    paper = pd.DataFrame(index=variants)
    paper_variant: dict[str, str] = {}
    if spec.get("mirrors"):
        ptable = load_paper_table(spec["mirrors"])
        for v in variants:
            pv = rows_map.get(v, v)
            if pv in ptable.index:
                paper_variant[v] = pv
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
    )


def _latest_per_variant_seed(tidy: pd.DataFrame) -> pd.DataFrame:
    """Without an explicit run list, keep one run per (experiment, variant, seed): the newest."""
    if tidy.empty:
        return tidy
    last = tidy.groupby(["experiment", "variant", "seed", "run_id"])["mtime"].max().reset_index()
    last = last.sort_values("mtime").drop_duplicates(["experiment", "variant", "seed"], keep="last")
    return tidy[tidy["run_id"].isin(last["run_id"])]


# ---------------------------------------------------------------- export


def _fmt(value: float, col: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{DECIMALS.get(col, 2)}f}"


def _fmt_paper(value: float, col: str) -> str:
    """The paper's numbers as printed there (whole M / GFLOPs, two decimals for percentages)."""
    if value is None or math.isnan(value):
        return ""
    return f"{value:g}" if col in COST else f"{value:.2f}"


def _cell(t: TableData, variant: str, col: str, pm: str) -> str:
    mean = t.mean.loc[variant, col]
    text = _fmt(mean, col)
    std = t.std.loc[variant, col]
    if text and col not in COST and t.n.get(variant, 0) > 1 and not math.isnan(std):
        text += f"{pm}{_fmt(std, col)}"
    return text


def to_csv(t: TableData) -> str:
    """Plain numbers: variant, paper variant, seeds, <col>_mean, <col>_std, paper_<col>."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["variant", "paper_variant", "seeds"]
    for col in t.columns:
        header += [f"{col}_mean", f"{col}_std"]
    header += [f"paper_{c}" for c in t.paper.columns]
    writer.writerow(header)
    for v in t.mean.index:
        row: list[Any] = [v, t.paper_variant.get(v, ""), int(t.n.get(v, 0))]
        for col in t.columns:
            m, s = t.mean.loc[v, col], t.std.loc[v, col]
            row += ["" if math.isnan(m) else round(m, 4), "" if math.isnan(s) else round(s, 4)]
        row += ["" if math.isnan(t.paper.loc[v, c]) else t.paper.loc[v, c] for c in t.paper.columns]
        writer.writerow(row)
    return buf.getvalue()


def _display_frame(t: TableData, pm: str, dash: str) -> pd.DataFrame:
    data = {LABELS[c]: [(_cell(t, v, c, pm) or dash) for v in t.mean.index] for c in t.columns}
    for c in t.paper.columns:
        data[f"paper {LABELS[c]}"] = [(_fmt_paper(t.paper.loc[v, c], c) or dash) for v in t.mean.index]
    return pd.DataFrame(data, index=pd.Index(list(t.mean.index), name="variant"))


def to_markdown(t: TableData) -> str:
    """A GitHub Markdown table; best in bold, second underlined; the caption below."""
    frame = _display_frame(t, " ± ", "–")
    best = t.best()
    lines = ["| variant | " + " | ".join(frame.columns) + " |", "|---|" + "---:|" * len(frame.columns)]
    for v in frame.index:
        cells = []
        for col_label, col in zip(frame.columns, [*t.columns, *t.paper.columns], strict=True):
            text = frame.loc[v, col_label]
            if not col_label.startswith("paper ") and col in best:
                first, second = best[col]
                text = f"**{text}**" if v in first else f"<u>{text}</u>" if v in second else text
            cells.append(text)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n"
    if t.caption:
        out += f"\n{t.caption}\n"
    return out


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "–": "--",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(t: TableData) -> str:
    """LaTeX through pandas' Styler: booktabs rules (hrules), best in bold, second underlined."""
    frame = _display_frame(t, " ± ", "–")
    frame = frame.map(latex_escape)
    frame.index = [latex_escape(v) for v in frame.index]
    frame.columns = [latex_escape(c) for c in frame.columns]
    best = t.best()
    ours = list(frame.columns[: len(t.columns)])

    def style_column(series: pd.Series) -> list[str]:
        col = t.columns[ours.index(series.name)] if series.name in ours else None
        if col is None or col not in best:
            return [""] * len(series)
        first, second = best[col]
        return ["textbf:--rwrap;" if v in first else "underline:--rwrap;" if v in second else "" for v in t.mean.index]

    styler = frame.style.apply(style_column, axis=0)
    kwargs: dict[str, Any] = {"hrules": True, "column_format": "l" + "r" * len(frame.columns)}
    if t.caption:
        kwargs.update(caption=latex_escape(t.caption), label=t.label, position="t", position_float="centering")
    return styler.to_latex(**kwargs)


def render(t: TableData, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UnknownNameError(unknown_name_message("format", fmt, FORMATS))
    return {"csv": to_csv, "markdown": to_markdown, "latex": to_latex}[fmt](t)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- caption


def caption_for(meta: dict[str, Any], runs_dir: Path, run_ids: list[str] | None = None) -> str:
    """One caption line: split, threshold, resolution, input size, weights, seeds and the FLOP convention,
    read from the runs' own files (config.yaml, metrics.json provenance, flops.json)."""
    spec = meta.get("table") or {}
    split = spec.get("split", "val")
    cost = spec.get("cost", "total")
    exp_dir = Path(runs_dir)
    dirs = [exp_dir / r for r in run_ids] if run_ids else [p for p in exp_dir.iterdir() if p.is_dir()]
    sizes, weights, thresholds, resolutions, datasets, text_lens = set(), set(), set(), set(), set(), set()
    for d in dirs:
        cfg_path = d / "config.yaml"
        if cfg_path.is_file():
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
            enc = (cfg.get("model") or {}).get("encoder") or {}
            if enc.get("image_size"):
                sizes.add(int(enc["image_size"]))
            weights.add(str(enc.get("weights") or "random"))
            data = cfg.get("data") or {}
            name = str(data.get("name") or "?")
            datasets.add(f"{name} ({data['flavour']})" if data.get("flavour") else name)
            ev = cfg.get("eval") or {}
            if ev.get("threshold") is not None:
                thresholds.add(ev["threshold"])
            if ev.get("resolution"):
                resolutions.add(str(ev["resolution"]))
        metrics = _read_json(d / "metrics.json") or {}
        prov = metrics.get("provenance") if isinstance(metrics.get("provenance"), dict) else {}
        for key, bucket in (("threshold", thresholds), ("resolution", resolutions), ("weights", weights)):
            value = prov.get(key, metrics.get(key))
            if value is not None:
                bucket.add(str(value) if key != "threshold" else value)
        flops = _read_json(d / "flops.json") or {}
        if flops.get("text_len"):
            text_lens.add(int(flops["text_len"]))

    def one(values: set, default: str) -> str:
        return ", ".join(str(v) for v in sorted(values, key=str)) if values else default

    seeds = meta.get("seeds") or []
    parts = []
    if spec.get("caption"):
        parts.append(spec["caption"].rstrip("."))
    parts.append(f"Ours: {one(datasets, 'dataset ?')}, split {split}")
    parts.append(f"mask threshold {one(thresholds, '0.35')}, metrics at {one(resolutions, 'original')} resolution")
    parts.append("input " + (one({f"{s}×{s}" for s in sizes}, "?")))
    parts.append(f"weights: {one(weights, 'random')}")
    if len(seeds) > 1:
        parts.append(f"mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})")
    else:
        parts.append(f"seed {one(set(seeds), '0')}")
    scope = "whole model" if cost == "total" else f"{cost} only"
    flop_text = f"Params/GFLOPs: {scope}, fvcore count (1 multiply-add = 1 FLOP)"
    if text_lens:
        flop_text += f", {one(text_lens, '')} text tokens"
    parts.append(flop_text)
    if spec.get("mirrors"):
        parts.append(f"paper: Shared-RIS Table {spec['mirrors']} (RefCOCO+ val, BEiT-3 B, 480×480)")
    parts.append("best in bold, second underlined")
    return "; ".join(parts) + "."


def table_for_dir(
    runs_dir: str | Path, run_ids: list[str] | None = None, columns: list[str] | None = None
) -> TableData:
    """Collect and pivot one experiment's run folder (runs/<experiment>/), using its experiment.json;
    `columns` narrows the table's columns (e.g. the cost columns only)."""
    runs_dir = Path(runs_dir)
    meta = _read_json(runs_dir / "experiment.json") or {"name": runs_dir.name}
    if columns is not None:
        spec = dict(meta.get("table") or {})
        spec["columns"] = [c for c in spec.get("columns", COLUMNS) if c in columns]
        meta = {**meta, "table": spec}
    tidy = collect(runs_dir)
    if tidy.empty:
        raise RisbenchError(f"{runs_dir}: no metrics.json or flops.json found under it")
    table = build_table(tidy, meta, run_ids)
    table.caption = caption_for(meta, runs_dir, run_ids)
    return table
