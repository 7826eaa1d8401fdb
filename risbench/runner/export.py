"""Export a TableData: CSV (plain numbers, mean and std columns), Markdown and LaTeX (pandas Styler,
booktabs; best in bold, second underlined) and the caption. Files are written with
risbench.train.checkpoint.atomic_write_text (temporary file + rename)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from risbench.errors import UnknownNameError, unknown_name_message
from risbench.runner.tables import COST, DECIMALS, LABELS, TableData, read_json

FORMATS = ("csv", "markdown", "latex")


def fmt_value(value: float, col: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{DECIMALS.get(col, 2)}f}"


def fmt_paper(value: float, col: str) -> str:
    """The paper's numbers as printed there (whole M / GFLOPs, two decimals for percentages)."""
    if value is None or math.isnan(value):
        return ""
    return f"{value:g}" if col in COST else f"{value:.2f}"


def _cell(t: TableData, variant: str, col: str, pm: str) -> str:
    mean = t.mean.loc[variant, col]
    text = fmt_value(mean, col)
    std = t.std.loc[variant, col]
    if text and col not in COST and t.n.get(variant, 0) > 1 and not math.isnan(std):
        text += f"{pm}{fmt_value(std, col)}"
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
        data[f"paper {LABELS[c]}"] = [(fmt_paper(t.paper.loc[v, c], c) or dash) for v in t.mean.index]
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
            detail = "/".join(str(data[k]) for k in ("flavour", "dataset", "split_by") if data.get(k))
            name = str(data.get("name") or "?")
            datasets.add(f"{name} ({detail})" if detail else name)
            ev = cfg.get("eval") or {}
            if ev.get("threshold") is not None:
                thresholds.add(ev["threshold"])
            if ev.get("resolution"):
                resolutions.add(str(ev["resolution"]))
        metrics = read_json(d / "metrics.json") or {}
        prov = metrics.get("provenance") if isinstance(metrics.get("provenance"), dict) else {}
        for key, bucket in (("threshold", thresholds), ("resolution", resolutions), ("weights", weights)):
            value = prov.get(key, metrics.get(key))
            if value is not None:
                bucket.add(str(value) if key != "threshold" else value)
        flops = read_json(d / "flops.json") or {}
        text_len = (flops.get("input") or {}).get("text_len", flops.get("text_len"))
        if text_len:
            text_lens.add(int(text_len))

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
    parts.append("input " + (one({f"{s}×{s}" for s in sizes}, "?")))
    if accuracy:
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
        parts.append(f"paper: Shared-RIS Table {spec['mirrors']} (RefCOCO+ val, 480×480)")
    if accuracy:
        parts.append("best in bold, second underlined")
    return "; ".join(parts) + "."
