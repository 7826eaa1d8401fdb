"""`risbench table`: collect run outputs into one tidy frame, pivot to the paper's layout, export.

collect(runs_dir)  -> tidy DataFrame, one row per run x split x metric (risbench.runner.collect)
build_table(...)   -> TableData: rows = variants in the experiment's order, columns Params, GFLOPs, P@X,
                      oIoU, mIoU as mean and std over seeds, the paper's numbers beside them, and the
                      statistics (risbench.runner.table_stats): t-intervals over seeds, differences from
                      the reference row with paired bootstrap intervals
caption_for(...)   -> the table's caption, read from the runs' own files
Exports (CSV, Markdown, LaTeX) live in risbench.runner.export; the run files' schemas in risbench.results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from risbench.config import PROJECT_ROOT, registry_dir
from risbench.errors import RisbenchError, UnknownNameError, unknown_name_message
from risbench.results import FLOPS_FILE, METRICS_FILE, Flops, Metrics
from risbench.runner.collect import collect, read_json
from risbench.runner.columns import (
    COLUMNS,
    COST,
    DECIMALS,
    LABELS,
    higher_is_better,
    is_column,
    known_columns,
    split_column,
)
from risbench.runner.columns import label as column_label
from risbench.runner.pretrained import describe_weights
from risbench.runner.stats import DEFAULT_REPLICATES
from risbench.runner.stats_robust import ROBUST
from risbench.runner.table_stats import DEFAULT_DELTA, TableStats, compute_stats, resolve_reference

PAPER_CSV_COLUMNS = {"params": "params_m"}  # our column -> registry/paper_tables.csv column


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
            if not higher_is_better(col):
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
    columns = [c for c in spec.get("columns", COLUMNS) if is_column(c)]
    if run_ids is not None:
        tidy = tidy[tidy["run_id"].isin(run_ids)]
    else:
        tidy = _latest_per_variant_seed(tidy)
    order = list(meta.get("variants") or [])
    seen = list(dict.fromkeys(tidy.sort_values(["index", "variant"])["variant"]))
    variants = order + [v for v in seen if v not in order]
    ref = resolve_reference(spec, variants, reference)

    want = tidy[((tidy["split"] == split) & tidy["metric"].map(higher_is_better).astype(bool))]
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


# ---------------------------------------------------------------- caption


def delta_caption(st: TableStats) -> str:
    """How the Δ column was computed, with the real numbers of sentences, seeds and replicates."""

    def span(values: list[int]) -> str:
        return str(values[0]) if len(set(values)) == 1 else f"{min(values)}-{max(values)}"

    done = [v for v in st.diff_seeds]
    if not done:
        reasons = sorted(set(st.note.values())) or ["no other variant"]
        return f"Δ vs {st.reference}: not computed ({'; '.join(reasons)})"
    sentences = span([st.sentences[v] for v in done])
    seeds = span([st.diff_seeds[v] for v in done])
    seed_word = "seed" if seeds == "1" else "seeds"
    if st.replicates <= 0:
        return f"Δ vs {st.reference}: mean over {seeds} paired {seed_word}, no interval (bootstrap off)"
    robust = [c for c in st.delta_columns if c in ROBUST]
    refs = ""
    if robust and st.refs:
        names = " and ".join(f"Δ {column_label(c)}" for c in robust)
        refs = f" ({names}: over their {span([st.refs[v] for v in st.refs])} refs, each ref's sentences drawn together)"
    return (
        f"Δ vs {st.reference}: paired bootstrap over {sentences} sentences and {seeds} {seed_word}, "
        f"{st.replicates} replicates, percentile 95% CI{refs}; * = CI excludes 0"
    )


def caption_for(
    meta: dict[str, Any], runs_dir: Path, run_ids: list[str] | None = None, stats: TableStats | None = None
) -> str:
    """One caption line: split, threshold, resolution, input size, weights, seeds, how the intervals
    were computed (`stats`) and the FLOP convention, read from the runs' own files (config.yaml,
    metrics.json provenance, flops.json)."""
    spec = meta.get("table") or {}
    split = spec.get("split", "val")
    cost = spec.get("cost", "total")
    exp_dir = Path(runs_dir)
    dirs = [exp_dir / r for r in run_ids] if run_ids else [p for p in exp_dir.iterdir() if p.is_dir()]
    sizes, weights, thresholds, resolutions, datasets, text_lens = set(), set(), set(), set(), set(), set()
    stale = sorted(d.name for d in dirs if (d / "stale.json").is_file())
    for d in dirs:
        cfg_path = d / "config.yaml"
        run_weights = None
        if cfg_path.is_file():
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
            enc = (cfg.get("model") or {}).get("encoder") or {}
            if enc.get("image_size") and not (d / FLOPS_FILE).is_file():
                sizes.add(int(enc["image_size"]))
            run_weights = str(enc.get("weights") or "random")  # a dual encoder's are in its towers' sections
            data = cfg.get("data") or {}
            detail = "/".join(str(data[k]) for k in ("flavour", "dataset", "split_by") if data.get(k))
            name = str(data.get("name") or "?")
            datasets.add(f"{name} ({detail})" if detail else name)
            ev = cfg.get("eval") or {}
            if ev.get("threshold") is not None:
                thresholds.add(ev["threshold"])
            if ev.get("resolution"):
                resolutions.add(str(ev["resolution"]))
        if (d / METRICS_FILE).is_file():
            prov = Metrics.read(d / METRICS_FILE).provenance
            for key, bucket in (("threshold", thresholds), ("resolution", resolutions)):
                if prov.get(key) is not None:
                    bucket.add(prov[key] if key == "threshold" else str(prov[key]))
            if prov.get("weights") is not None:  # what the run loaded, over what its config names
                run_weights = str(prov["weights"])
        if run_weights is not None:
            weights.add(run_weights)
        if (d / FLOPS_FILE).is_file():
            flops = Flops.read(d / FLOPS_FILE)
            if flops.text_len:
                text_lens.add(flops.text_len)
            if flops.input.get("image_size"):  # the built model's input (a dual encoder's is its tower's)
                sizes.add(int(flops.input["image_size"]))

    def one(values: set, default: str) -> str:
        return ", ".join(str(v) for v in sorted(values, key=str)) if values else default

    seeds = meta.get("seeds") or []
    parts = []
    if spec.get("caption"):
        parts.append(spec["caption"].rstrip("."))
    accuracy = any(c not in COST for c in spec.get("columns", LABELS))
    if accuracy:
        parts.append(f"Ours: {one(datasets, 'dataset ?')}, split {split}")
        parts.append(f"mask threshold {one(thresholds, '0.35')}, metrics at {one(resolutions, 'original')} resolution")
        kinds = [c for c in spec.get("columns", ()) if split_column(c)[1] is not None]
        if kinds:
            parts.append(
                f"{column_label(kinds[0])} and the like: over the positive sentences of that kind as the dataset "
                "classifies them (SynthRef: the kinds of words an expression uses, as `risbench data breakdown`)"
            )
    parts.append("input " + (one({f"{s}×{s}" for s in sizes}, "?")))
    if accuracy:
        parts.append(f"weights: {one({describe_weights(w) for w in weights}, 'random')}")
        if len(seeds) > 1:
            text = f"mean ± 95% t-interval half-width over {len(seeds)} seeds ({', '.join(map(str, seeds))})"
            parts.append(text + "; a cell without ± has one seed")
        else:
            parts.append(f"seed {one(set(seeds), '0')} (one seed: no interval over seeds)")
        if stats is not None and stats.reference is not None and len(stats.diff.columns):
            parts.append(delta_caption(stats))
    scope = "whole model" if cost == "total" else f"{cost} only"
    flop_text = f"Params/GFLOPs: {scope}, fvcore count (1 multiply-add = 1 FLOP)"
    if text_lens:
        flop_text += f", {one(text_lens, '')} text tokens"
    parts.append(flop_text)
    if spec.get("paper_caption"):
        parts.append(f"paper: {spec['paper_caption']}")
    elif spec.get("mirrors"):
        parts.append(f"paper: Shared-RIS Table {spec['mirrors']} (RefCOCO+ val, 480×480)")
    if accuracy:
        parts.append("best in bold, second underlined")
    if stale:
        parts.append(f"STALE, produced by other code than this checkout (kept with --keep-stale): {', '.join(stale)}")
    return "; ".join(parts) + "."


def table_for_dir(
    runs_dir: str | Path,
    run_ids: list[str] | None = None,
    columns: list[str] | None = None,
    *,
    reference: str | None = None,
    replicates: int = DEFAULT_REPLICATES,
    show: list[str] | None = None,
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
    if show is not None:
        unknown = [c for c in show if not is_column(c)]
        if unknown:
            raise UnknownNameError("--columns: " + unknown_name_message("column", unknown[0], known_columns()))
        spec = dict(meta.get("table") or {})
        delta = [c for c in spec.get("delta", DEFAULT_DELTA) if c in show]
        delta += [c for c in show if split_column(c)[1] is not None and c not in delta]  # each kind column's Δ
        spec.update(columns=list(show), delta=delta)
        meta = {**meta, "table": spec}
    tidy = collect(runs_dir)
    if tidy.empty:
        raise RisbenchError(f"{runs_dir}: no metrics.json or flops.json found under it")
    table = build_table(tidy, meta, run_ids, reference=reference, replicates=replicates)
    table.caption = caption_for(meta, runs_dir, run_ids, table.stats)
    return table
