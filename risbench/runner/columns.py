"""The columns a table can have: the cost columns (params, GFLOPs; not ranked), every column a metric
declares when it registers (`METRICS.register(..., columns={key: Column(label, higher_is_better, position)})`),
the same accuracy over one kind of sentence (`p50@shape`: P@0.5 over the sentences of kind 'shape', from
the `by_kind` metric; SynthRef's kinds are the kinds of words an expression uses), and how their numbers
are printed."""

from __future__ import annotations

import math

from risbench.registry import METRICS
from risbench.train.metrics import Column

COST_COLUMNS = {"params": Column("Params (M)", False, 0), "gflops": Column("GFLOPs", False, 1)}


def all_columns() -> dict[str, Column]:
    """key -> Column, cost columns first, then the metrics' columns in their declared positions."""
    cols = dict(COST_COLUMNS)
    for entry in METRICS:
        cols.update(entry.meta.get("columns", {}))
    return dict(sorted(cols.items(), key=lambda kv: kv[1].position))


COLUMNS: tuple[str, ...] = tuple(all_columns())
LABELS: dict[str, str] = {k: c.label for k, c in all_columns().items()}
COST: tuple[str, ...] = tuple(COST_COLUMNS)
HIGHER_IS_BETTER: tuple[str, ...] = tuple(k for k, c in all_columns().items() if c.higher_is_better)
DECIMALS = {"params": 2, "gflops": 2}  # accuracy columns: 2 decimals, as the paper
SLICE_BASES = ("p50", "oiou", "miou")  # what `by_kind` measures per kind: `<base>@<kind>` columns


def split_column(col: str) -> tuple[str, str | None]:
    """'p50@shape' -> ('p50', 'shape'); 'p50' -> ('p50', None)."""
    base, sep, kind = col.partition("@")
    return (base, kind) if sep else (col, None)


def is_column(col: str) -> bool:
    """A known column: one of COLUMNS, or `<base>@<kind>` with base in SLICE_BASES and a kind of letters,
    digits, '+', '_' or '-'."""
    base, kind = split_column(col)
    if kind is None:
        return col in COLUMNS
    return base in SLICE_BASES and bool(kind) and all(c.isalnum() or c in "+_-" for c in kind)


def known_columns() -> list[str]:
    """The names an unknown column is matched against ("did you mean"): COLUMNS and `<base>@<kind>`."""
    return [*COLUMNS, *(f"{b}@<kind>" for b in SLICE_BASES)]


def label(col: str) -> str:
    """The column's header: 'P@0.5', or 'P@0.5 (shape)' for a column over one kind of sentence."""
    base, kind = split_column(col)
    return LABELS[base] if kind is None else f"{LABELS[base]} ({kind})"


def higher_is_better(col: str) -> bool:
    return split_column(col)[0] in HIGHER_IS_BETTER and is_column(col)


def fmt_value(value: float | None, col: str, decimals: int | None = None) -> str:
    """Our number at the column's precision (`decimals` overrides it); '' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{DECIMALS.get(col, 2) if decimals is None else decimals}f}"


def fmt_paper(value: float | None, col: str) -> str:
    """The paper's numbers as printed there (whole M / GFLOPs, two decimals for percentages)."""
    if value is None or math.isnan(value):
        return ""
    return f"{value:g}" if col in COST else f"{value:.2f}"
