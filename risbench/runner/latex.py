"""A TableData as a LaTeX table that fits the page: pandas Styler with booktabs rules, one column group
per metric (ours, Δ from the reference row, the paper's number), the seed interval as a small
"68.4±0.6" beside the mean, Δ with a * where its bootstrap interval excludes 0 (the interval is in
the CSV and Markdown), best mean in bold and second underlined.

The float is `table*`, so on a two-column page (IEEE) it spans \\textwidth; \\tabcolsep is 4 pt. A table
still wider than \\linewidth is scaled down to it (graphicx \\resizebox, only when too wide), the last
resort; scripts/check_latex.sh checks the result in a one-column article and on a two-column IEEE page.
Needs \\usepackage{booktabs,graphicx}.
"""

from __future__ import annotations

import math

import pandas as pd

from risbench.runner.columns import COST, fmt_paper, fmt_value
from risbench.runner.columns import label as column_label
from risbench.runner.tables import TableData

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
    "Δ": r"$\Delta$",
}
DASH = "--"
OURS, DELTA, PAPER = "ours", r"$\Delta$", "paper"
SHRINK_OPEN = "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n"


def latex_escape(text: str) -> str:
    """`text` with LaTeX's special characters (and ± × – Δ) escaped; the result is ASCII for ASCII input."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _minus(text: str) -> str:
    """Numbers with a typographic minus."""
    return text.replace("-", "$-$")


def column_decimals(t: TableData) -> dict[str, int]:
    """Decimals per accuracy column: 1 where the column shows a seed interval (as papers print
    68.4±0.6; the second decimal is below the interval's resolution), else the column's default."""
    out: dict[str, int] = {}
    for col in t.columns:
        if col in COST or t.stats is None:
            continue
        halves = [t.stats.half_width(v, col) for v in t.mean.index]
        if any(not math.isnan(h) for h in halves):
            out[col] = 1
    return out


def ours_cell(t: TableData, variant: str, col: str, decimals: int | None) -> str:
    """'68.4{\\scriptsize$\\pm$0.6}': the mean and, where there is one, the 95% t-interval half-width."""
    text = fmt_value(t.mean.loc[variant, col], col, decimals)
    if not text:
        return DASH
    text = _minus(text)
    if col not in COST and t.stats is not None:
        half = t.stats.half_width(variant, col)
        if not math.isnan(half):
            text += "{\\scriptsize$\\pm$" + fmt_value(half, col, decimals) + "}"
    return text


def delta_cell(t: TableData, variant: str, col: str, decimals: int | None) -> str:
    """'+1.7$^*$' (variant − reference; * when its paired bootstrap 95% CI excludes 0; the interval itself
    is in the CSV and Markdown, it would double the table's width here), 'ref' on the reference row, 'n/a'
    where the difference is missing (the caption says why)."""
    st = t.stats
    assert st is not None
    if variant == st.reference:
        return "ref"
    d = st.diff.loc[variant, col]
    if variant in st.note or math.isnan(d):
        return "n/a"
    places = 2 if decimals is None else decimals
    text = _minus(f"{round(d, places) + 0.0:+.{places}f}")
    return text + ("$^*$" if st.separable.loc[variant, col] else "")


def _frame(t: TableData, decimals: dict[str, int]) -> pd.DataFrame:
    """The cells, with (group label, sub-column) MultiIndex columns."""
    deltas = t.stats.delta_columns if t.stats is not None and t.stats.reference else []
    data: dict[tuple[str, str], list[str]] = {}
    for col in t.columns:
        subs = [OURS] + ([DELTA] if col in deltas else []) + ([PAPER] if col in t.paper.columns else [])
        label = latex_escape(column_label(col))
        for sub in subs:
            key = (label, sub if len(subs) > 1 else "")
            if sub == OURS:
                data[key] = [ours_cell(t, v, col, decimals.get(col)) for v in t.mean.index]
            elif sub == DELTA:
                data[key] = [delta_cell(t, v, col, decimals.get(col)) for v in t.mean.index]
            else:
                data[key] = [fmt_paper(t.paper.loc[v, col], col) or DASH for v in t.mean.index]
    frame = pd.DataFrame(data, index=[latex_escape(v) for v in t.mean.index])
    if any(sub for _, sub in data):
        frame.columns = pd.MultiIndex.from_tuples(list(data))
    else:  # no column has sub-columns: one header row
        frame.columns = [label for label, _ in data]
    return frame


def _delta_note(t: TableData) -> str:
    """Where the Δ intervals are, and why a Δ cell is n/a (LaTeX, for the caption)."""
    st = t.stats
    if st is None or st.reference is None or not st.delta_columns:
        return ""
    parts = ["$\\Delta$ intervals: CSV and Markdown exports"] if st.diff_seeds and st.replicates > 0 else []
    by_reason: dict[str, list[str]] = {}
    for variant, reason in st.note.items():
        by_reason.setdefault(reason, []).append(variant)
    parts += [f"$\\Delta$ n/a for {latex_escape(', '.join(vs))}: {latex_escape(r)}" for r, vs in by_reason.items()]
    return "; ".join(parts)


def _group(key: str | tuple[str, str]) -> str:
    return key[0] if isinstance(key, tuple) else key


def _sub(key: str | tuple[str, str]) -> str:
    return key[1] if isinstance(key, tuple) else ""


def _cmidrules(frame: pd.DataFrame) -> str:
    """\\cmidrule under every group label that spans more than one column."""
    rules, start = [], 2  # column 1 is the variant
    groups = list(dict.fromkeys(frame.columns.get_level_values(0)))
    for label in groups:
        width = sum(1 for g in frame.columns.get_level_values(0) if g == label)
        if width > 1:
            rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    return " ".join(rules)


def to_latex(t: TableData) -> str:
    """The table as LaTeX (see the module docstring)."""
    decimals = column_decimals(t)
    frame = _frame(t, decimals)
    best = t.best(decimals)
    marks = {
        key: best[col]
        for key in frame.columns
        for col in t.columns
        if _group(key) == latex_escape(column_label(col)) and _sub(key) in (OURS, "") and col in best
    }

    def style_column(series: pd.Series) -> list[str]:
        if series.name not in marks:
            return [""] * len(series)
        first, second = marks[series.name]
        return ["textbf:--rwrap;" if v in first else "underline:--rwrap;" if v in second else "" for v in t.mean.index]

    caption = "; ".join(p for p in (latex_escape(t.caption.rstrip(".")), _delta_note(t)) if p)
    kwargs = {"hrules": True, "column_format": "l" + "r" * len(frame.columns), "multicol_align": "c"}
    if caption:
        kwargs.update(caption=caption + ".", label=t.label, position="t", position_float="centering")
    text = frame.style.apply(style_column, axis=0).to_latex(environment="table*", **kwargs)
    if frame.columns.nlevels > 1:
        header = text.index("\\toprule\n") + len("\\toprule\n")
        end = text.index("\n", header) + 1
        text = text[:end] + _cmidrules(frame) + "\n" + text[end:]
    text = text.replace("\\begin{tabular}", "\\setlength{\\tabcolsep}{4pt}\n" + SHRINK_OPEN + "\\begin{tabular}", 1)
    text = text.replace("\\end{tabular}\n", "\\end{tabular}}\n", 1)
    return "% risbench table: needs \\usepackage{booktabs,graphicx}\n" + text
