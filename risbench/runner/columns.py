"""The columns a table can have: the cost columns (params, GFLOPs; not ranked) and every column a metric
declares when it registers (`METRICS.register(..., columns={key: Column(label, higher_is_better, position)})`),
and how their numbers are printed."""

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
