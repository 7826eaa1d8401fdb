"""Export a TableData: CSV (plain numbers: per column mean, std, n, t-interval, difference from the
reference row with its bootstrap interval, separable), Markdown (mean ± t-interval half-width, a Δ column
per shown accuracy metric; best mean in bold, second underlined) and LaTeX (risbench.runner.latex); the
caption comes with the table (risbench.runner.tables). Callers write the text with
risbench.io.atomic_write_text (temporary file + rename)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import pandas as pd

from risbench.errors import UnknownNameError, unknown_name_message
from risbench.runner.columns import COST, fmt_paper, fmt_value
from risbench.runner.columns import label as column_label
from risbench.runner.latex import SHRINK_OPEN, to_latex
from risbench.runner.tables import TableData

FORMATS = ("csv", "markdown", "latex")
__all__ = ["FORMATS", "SHRINK_OPEN", "fmt_paper", "fmt_value", "render", "to_csv", "to_latex", "to_markdown"]


def _cell(t: TableData, variant: str, col: str, pm: str) -> str:
    """The mean, with ± the 95% t-interval half-width where there is one (two seeds or more)."""
    text = fmt_value(t.mean.loc[variant, col], col)
    if text and col not in COST and t.stats is not None:
        half = t.stats.half_width(variant, col)
        if not math.isnan(half):
            text += f"{pm}{fmt_value(half, col)}"
    return text


def _signed(x: float) -> str:
    x = round(x, 2) + 0.0  # no "-0.00"
    return f"{x:+.2f}"


def delta_cell(t: TableData, variant: str, col: str) -> str:
    """'+1.23 [0.40, 2.05]*' (variant − reference, bootstrap 95% CI, * when it excludes 0); 'ref' on the
    reference row; the reason where the difference cannot be computed."""
    st = t.stats
    if st is None or st.reference is None:
        return ""
    if variant == st.reference:
        return "ref"
    if variant in st.note:
        return st.note[variant]
    d, lo, hi = st.diff.loc[variant, col], st.diff_low.loc[variant, col], st.diff_high.loc[variant, col]
    if math.isnan(d):
        return ""
    if math.isnan(lo):
        return _signed(d)
    return f"{_signed(d)} [{lo + 0.0:.2f}, {hi + 0.0:.2f}]" + ("*" if st.separable.loc[variant, col] else "")


def _num(x: float) -> Any:
    return "" if x is None or math.isnan(x) else round(float(x), 4)


def to_csv(t: TableData) -> str:
    """Plain numbers: variant, paper variant, seeds; per column <col>_mean, _std, _n, _ci_low, _ci_high
    (95% t-interval over seeds), _diff, _diff_ci_low, _diff_ci_high (variant − reference, paired bootstrap
    95% CI), _separable (true / false; empty where there is no interval); then reference (true on the
    reference row), diff_seeds, diff_sentences, diff_note (why the differences are missing), paper_<col>."""
    st = t.stats
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["variant", "paper_variant", "seeds"]
    parts = ("mean", "std", "n", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high", "separable")
    for col in t.columns:
        header += [f"{col}_{p}" for p in parts]
    header += ["reference", "diff_seeds", "diff_sentences", "diff_note"]
    header += [f"paper_{c}" for c in t.paper.columns]
    writer.writerow(header)
    for v in t.mean.index:
        row: list[Any] = [v, t.paper_variant.get(v, ""), int(t.n.get(v, 0))]
        for col in t.columns:
            n = int(t.count.loc[v, col]) if t.count is not None else int(t.n.get(v, 0))
            row += [_num(t.mean.loc[v, col]), _num(t.std.loc[v, col]), n]
            row += [_num(st.ci_low.loc[v, col]), _num(st.ci_high.loc[v, col])] if st else ["", ""]
            if st is not None and col in st.diff.columns and v != st.reference:
                lo = st.diff_low.loc[v, col]
                sep = "" if math.isnan(lo) else str(bool(st.separable.loc[v, col])).lower()
                row += [_num(st.diff.loc[v, col]), _num(lo), _num(st.diff_high.loc[v, col]), sep]
            else:
                row += ["", "", "", ""]
        is_ref = st is not None and v == st.reference
        row += [str(is_ref).lower(), st.diff_seeds.get(v, "") if st else "", st.sentences.get(v, "") if st else ""]
        row += [st.note.get(v, "") if st else ""]
        row += ["" if math.isnan(t.paper.loc[v, c]) else t.paper.loc[v, c] for c in t.paper.columns]
        writer.writerow(row)
    return buf.getvalue()


def _layout(t: TableData) -> list[tuple[str, str, str]]:
    """(label, kind, column) of each displayed column: ours (means), delta, then paper."""
    out = [(column_label(c), "ours", c) for c in t.columns]
    out += [
        (f"Δ {column_label(c)}", "delta", c) for c in (t.stats.delta_columns if t.stats and t.stats.reference else [])
    ]
    return out + [(f"paper {column_label(c)}", "paper", c) for c in t.paper.columns]


def _display_frame(t: TableData, pm: str, dash: str) -> pd.DataFrame:
    data = {}
    for label, kind, c in _layout(t):
        if kind == "ours":
            data[label] = [(_cell(t, v, c, pm) or dash) for v in t.mean.index]
        elif kind == "delta":
            data[label] = [(delta_cell(t, v, c) or dash) for v in t.mean.index]
        else:
            data[label] = [(fmt_paper(t.paper.loc[v, c], c) or dash) for v in t.mean.index]
    return pd.DataFrame(data, index=pd.Index(list(t.mean.index), name="variant"))


def to_markdown(t: TableData) -> str:
    """A GitHub Markdown table; best in bold, second underlined; the caption below."""
    frame = _display_frame(t, "±", "–")
    best = t.best()
    lines = ["| variant | " + " | ".join(frame.columns) + " |", "|---|" + "---:|" * len(frame.columns)]
    for v in frame.index:
        cells = []
        for col_label, (_, kind, col) in zip(frame.columns, _layout(t), strict=True):
            text = frame.loc[v, col_label]
            if kind == "ours" and col in best:
                first, second = best[col]
                text = f"**{text}**" if v in first else f"<u>{text}</u>" if v in second else text
            cells.append(text)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n"
    if t.caption:
        out += f"\n{t.caption}\n"
    return out


def render(t: TableData, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UnknownNameError(unknown_name_message("format", fmt, FORMATS))
    return {"csv": to_csv, "markdown": to_markdown, "latex": to_latex}[fmt](t)
