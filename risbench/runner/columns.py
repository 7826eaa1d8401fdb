"""The columns a table can have: the cost columns (params, GFLOPs; not ranked) and every column a metric
declares when it registers (`METRICS.register(..., columns={key: Column(label, higher_is_better, position)})`)."""

from __future__ import annotations

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
