"""`risbench efficiency`: our params / GFLOPs beside the paper's, row by row, from an experiment file.

The experiment file (e.g. experiments/efficiency.yaml):

    text_len: 20                 # full tokenised length incl. <s> and </s> (default 20)
    batch_size: 1                # default 1
    paper_tables: ...            # optional; default registry/paper_tables.csv (relative: to this file)
    rows:
      - table: VII(a)            # the `table` column of the paper table
        variant: "3,6,9,12"      # must match its `variant` column for that table
        encoder: BEiT-3 B        # optional; the `encoder` column, when (table, variant) is ambiguous
        model: shared-ris-b      # preset name or YAML path
        set: ["encoder.out_indices=[3, 6, 9, 12]"]   # optional --set overrides; or a mapping of
                                                      # dotted keys: {encoder.out_indices: [3, 6, 9, 12]}
        component: fpn           # encoder | fpn | decoder | total: which of our numbers is compared
        note: ...                # optional; says why a row misses the tolerance

Paper numbers come only from the paper table; nothing is typed by hand. Each row's model is built
once (random init: params and FLOPs do not depend on the weights) and measured with
`risbench.flops.measure`. Outputs (written atomically): DIR/efficiency.csv (header lines start with
'#'), DIR/efficiency.md, DIR/efficiency.json (the full measurements).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from risbench.config import PROJECT_ROOT, read_yaml, registry_dir, to_dataclass
from risbench.errors import RisbenchError
from risbench.flops import COMPONENTS, CONVENTION, giga, measure, millions
from risbench.io import atomic_write_text, git_text
from risbench.models.segmenter import build_segmenter
from risbench.spec import resolve_model_spec, validate_spec

PARAMS_ABS_TOL_M = 1.0  # params: within max(1M, 10%) of the paper
PARAMS_REL_TOL = 0.10
GFLOPS_REL_TOL = 0.10  # GFLOPs: within 10%
COMPARED = (*COMPONENTS, "total")

COLUMNS = (
    "table",
    "variant",
    "component",
    "ours params (M)",
    "paper params (M)",
    "ours GFLOPs",
    "paper GFLOPs",
    "within tolerance",
    "note",
    "model",
)


@dataclass
class EfficiencyRow:
    """One row of an efficiency experiment (see the module docstring)."""

    table: str
    variant: str
    model: str
    component: str
    set: list[str] | dict[str, Any] = field(default_factory=list)
    encoder: str | None = None
    note: str = ""


@dataclass
class EfficiencyExperiment:
    """An efficiency experiment file."""

    rows: list[EfficiencyRow] = field(default_factory=list)
    text_len: int = 20
    batch_size: int = 1
    paper_tables: str | None = None
    description: str = ""


def load_experiment(path: str | Path) -> tuple[EfficiencyExperiment, Path]:
    """The validated experiment and the resolved path of its paper table."""
    path = Path(path)
    data = read_yaml(path)
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise RisbenchError(f"{path}: expected a non-empty list under 'rows'")
    exp = to_dataclass(EfficiencyExperiment, {k: v for k, v in data.items() if k != "rows"}, str(path))
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise RisbenchError(f"{path}: rows[{i}]: expected a mapping, got {r!r}")
    exp.rows = [to_dataclass(EfficiencyRow, r, f"{path}: rows[{i}]") for i, r in enumerate(rows)]
    for row in exp.rows:
        row.set = override_list(row.set)
    for i, row in enumerate(exp.rows):
        if row.component not in COMPARED:
            raise RisbenchError(
                f"{path}: rows[{i}].component: expected one of {', '.join(COMPARED)}, got '{row.component}'"
            )
    if exp.paper_tables:
        paper = Path(exp.paper_tables)
        paper = paper if paper.is_absolute() else path.parent / paper
    else:
        paper = registry_dir() / "paper_tables.csv"
    return exp, paper


def override_list(items: list[str] | dict[str, Any]) -> list[str]:
    """`--set` strings from a list of 'key=value' or a mapping of dotted keys to values."""
    if isinstance(items, dict):
        return [
            f"{k}={yaml.safe_dump([v], default_flow_style=True, width=10**6).strip()[1:-1]}" for k, v in items.items()
        ]
    return list(items)


def load_paper_tables(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise RisbenchError(f"paper table not found: {path}")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def paper_row(paper: list[dict[str, str]], table: str, variant: str, encoder: str | None = None) -> dict[str, str]:
    """The one paper row for (table, variant[, encoder]); none or several is an error naming the choices."""
    in_table = [r for r in paper if r["table"] == table]
    if not in_table:
        tables = sorted({r["table"] for r in paper})
        raise RisbenchError(f"paper table has no table '{table}'; tables: {', '.join(tables)}")
    hits = [r for r in in_table if r["variant"] == variant and (encoder is None or r["encoder"] == encoder)]
    if len(hits) == 1:
        return hits[0]
    choices = "; ".join(f"'{r['variant']}' ({r['encoder']})" for r in in_table)
    if not hits:
        raise RisbenchError(
            f"table {table} has no variant '{variant}'"
            + (f" with encoder '{encoder}'" if encoder else "")
            + f"; variants: {choices}"
        )
    raise RisbenchError(
        f"table {table}: variant '{variant}' is ambiguous; add `encoder:` to the row; variants: {choices}"
    )


def _number(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def tolerance(
    ours_params_m: float, ours_gflops: float, paper_params_m: float | None, paper_gflops: float | None
) -> str:
    """'yes', 'no: params', 'no: GFLOPs', 'no: params, GFLOPs' or 'n/a' (the paper gives neither)."""
    if paper_params_m is None and paper_gflops is None:
        return "n/a"
    misses = []
    if paper_params_m is not None and abs(ours_params_m - paper_params_m) > max(
        PARAMS_ABS_TOL_M, PARAMS_REL_TOL * paper_params_m
    ):
        misses.append("params")
    if paper_gflops is not None and abs(ours_gflops - paper_gflops) > GFLOPS_REL_TOL * paper_gflops:
        misses.append("GFLOPs")
    return "no: " + ", ".join(misses) if misses else "yes"


def _compared(result: dict[str, Any], component: str) -> tuple[int, int]:
    part = result["total"] if component == "total" else result["components"][component]
    return part["params"], part["flops"]


def validate_experiment(path: str | Path) -> tuple[EfficiencyExperiment, Path, list[dict[str, str]]]:
    """Check an efficiency file without building models: its schema, every row's model spec (names,
    options; `risbench.spec.validate_spec`) and its paper row. Returns the file, the paper table's path
    and each row's paper row."""
    exp, paper_path = load_experiment(path)
    paper = load_paper_tables(paper_path)
    papers = [paper_row(paper, r.table, r.variant, r.encoder) for r in exp.rows]
    for i, row in enumerate(exp.rows):
        validate_spec(resolve_model_spec(row.model, row.set), f"{path}: rows[{i}] ({row.table} {row.variant})")
    return exp, paper_path, papers


def run_efficiency(path: str | Path, out_dir: str | Path, command: str, progress: Any = None) -> list[dict[str, Any]]:
    """Measure every row, write DIR/efficiency.{csv,md,json}; returns the table rows."""
    # every row checked (spec, paper row) before spending time on models
    exp, paper_path, papers = validate_experiment(path)
    table_rows, measurements, image_sizes = [], [], []
    for i, (row, ref) in enumerate(zip(exp.rows, papers, strict=True)):
        where = f"{path}: rows[{i}] ({row.table} {row.variant})"
        spec = resolve_model_spec(row.model, row.set)
        model = build_segmenter(spec, where=where)
        image_size = int(model.encoder.image_size)
        image_sizes.append(image_size)
        result = measure(model, image_size, exp.text_len, exp.batch_size)
        result["model"] = row.model
        result["overrides"] = list(row.set)
        del model
        params, flop = _compared(result, row.component)
        paper_params, paper_gflops = _number(ref["params_m"]), _number(ref["gflops"])
        ours_params, ours_gflops = millions(params), giga(flop)
        table_rows.append(
            {
                "table": row.table,
                "variant": row.variant,
                "component": row.component,
                "ours params (M)": f"{ours_params:.2f}",
                "paper params (M)": ref["params_m"],
                "ours GFLOPs": f"{ours_gflops:.2f}",
                "paper GFLOPs": ref["gflops"],
                "within tolerance": tolerance(ours_params, ours_gflops, paper_params, paper_gflops),
                "note": row.note.strip(),
                "model": shlex.join([row.model, *(part for s in row.set for part in ("--set", s))]),
            }
        )
        measurements.append({"row": table_rows[-1], "measurement": result})
        if progress:
            progress(table_rows[-1])
    header = _header(exp, paper_path, command, image_sizes)
    _write_outputs(Path(out_dir), header, table_rows, measurements)
    return table_rows


def _header(exp: EfficiencyExperiment, paper_path: Path, command: str, image_sizes: list[int]) -> list[tuple[str, str]]:
    import fvcore
    import torch

    sizes = sorted(set(image_sizes))
    size_text = ", ".join(f"{s}x{s}" for s in sizes) + (
        "" if len(sizes) == 1 else " (per row, from each model's encoder.image_size)"
    )
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        paper_shown = paper_path.resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        paper_shown = paper_path
    versions = f"torch {torch.__version__}, fvcore {getattr(fvcore, '__version__', '?')}"
    convention = CONVENTION.split(": ", 1)[1]
    params_tol = f"max({PARAMS_ABS_TOL_M:g}M, {PARAMS_REL_TOL:.0%})"
    header = [
        ("command", command),
        ("produced", f"{now} on {platform.node()} ({os.cpu_count()} CPUs), git {git_text()}, {versions}"),
        ("input size", size_text),
        ("text length", f"{exp.text_len} (the full tokenised length incl. <s> and </s>, no padding)"),
        ("batch size", str(exp.batch_size)),
        ("weights", "random (params and FLOPs do not depend on the weights)"),
        ("convention", f"GFLOPs as fvcore counts them: {convention}; attention (SDPA) counted as QK^T + AV matmuls"),
        ("tolerance", f"params within {params_tol} of the paper; GFLOPs within {GFLOPS_REL_TOL:.0%}"),
        ("paper numbers", str(paper_shown)),
    ]
    if exp.description.strip():
        header.append(("about", " ".join(exp.description.split())))
    return header


def _write_outputs(
    out_dir: Path, header: list[tuple[str, str]], rows: list[dict[str, Any]], measurements: list[dict]
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    for key, value in header:
        buf.write(f"# {key}: {value}\n")
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    md = ["# Efficiency: our params and GFLOPs beside the paper's", ""]
    md += [f"- {key}: {value}" if key != "command" else f"- command: `{value}`" for key, value in header]
    md += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
    payload = {"header": dict(header), "rows": measurements}
    files = {
        "efficiency.csv": buf.getvalue(),
        "efficiency.md": "\n".join(md) + "\n",
        "efficiency.json": json.dumps(payload, indent=2) + "\n",
    }
    for name, text in files.items():
        atomic_write_text(out_dir / name, text)
