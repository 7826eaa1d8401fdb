"""`risbench flops` (params and GFLOPs of one model) and `risbench efficiency` (ours beside the paper's)."""

from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from risbench.errors import RisbenchError

FORMATS = ("table", "csv", "json")


def flops_report(model: str, overrides: list[str], image_size: int | None, text_len: int, batch_size: int) -> dict:
    """Build the model (random init unless its spec names weights) and measure it."""
    from risbench.flops import measure
    from risbench.models.segmenter import build_segmenter
    from risbench.spec import resolve_model_spec

    items = list(overrides)
    if image_size is not None:
        items.append(f"encoder.image_size={image_size}")
    spec = resolve_model_spec(model, items)
    segmenter = build_segmenter(spec)
    size = int(segmenter.encoder.image_size)
    result = measure(segmenter, size, text_len, batch_size)
    result["model"] = model
    result["overrides"] = items
    result["spec"] = spec
    return result


def render_table(result: dict, console: Console) -> None:
    from risbench.flops import giga, millions

    overrides = " ".join(f"--set {s}" for s in result.get("overrides", []))
    table = Table(title=f"{result['model']} {overrides}".strip(), title_justify="left")
    table.add_column("component", style="bold")
    table.add_column("params (M)", justify="right")
    table.add_column("GFLOPs", justify="right")
    for name, part in result["components"].items():
        table.add_row(name, f"{millions(part['params']):.2f}", f"{giga(part['flops']):.2f}")
    total = result["total"]
    table.add_row("total", f"{millions(total['params']):.2f}", f"{giga(total['flops']):.2f}", style="bold")
    console.print(table)
    if any(row["part"] != row["component"] for row in result.get("parts", [])):
        parts = Table(title="parts", title_justify="left")
        for col in ("component", "part", "params (M)", "trainable (M)", "frozen (M)", "GFLOPs"):
            parts.add_column(col, justify="left" if col in ("component", "part") else "right")
        for row in result["parts"]:
            frozen = row["params"] - row["trainable_params"]
            parts.add_row(
                row["component"],
                row["part"],
                f"{millions(row['params']):.3f}",
                f"{millions(row['trainable_params']):.3f}",
                f"{millions(frozen):.3f}",
                f"{giga(row['flops']):.3f}",
            )
        console.print(parts)
    inp = result["input"]
    uncounted = ", ".join(f"{op} x{n}" for op, n in result["uncounted_ops"].items()) or "none"
    lines = [
        f"params: total {millions(total['params']):.2f}M, trainable {millions(total['trainable_params']):.2f}M "
        f"({100 * total['trainable_params'] / max(1, total['params']):.2f}%), "
        f"frozen {millions(total['frozen_params']):.2f}M",
        *(
            [
                f"encoder: trainable params are {100 * result['encoder_trainable_share_of_frozen']:.2f}% "
                "of its frozen ones"
            ]
            if "encoder_trainable_share_of_frozen" in result
            else []
        ),
        f"input: image {inp['image_size']}x{inp['image_size']}, text length {inp['text_len']} "
        f"(full tokenised length incl. <s> and </s>, no padding), batch {inp['batch_size']}",
        f"weights: {result['weights']}",
        f"uncounted ops (cheap; not in the GFLOPs): {uncounted}",
        "GFLOPs as fvcore counts them: one multiply-add = one flop",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def render_csv(result: dict) -> str:
    from risbench.flops import summary_rows

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["component", "params_m", "gflops"], lineterminator="\n")
    writer.writeheader()
    for row in summary_rows(result):
        writer.writerow(
            {"component": row["component"], "params_m": f"{row['params_m']:.4f}", "gflops": f"{row['gflops']:.4f}"}
        )
    return buf.getvalue()


def register(app: typer.Typer) -> None:
    @app.command("flops")
    def flops_cmd(
        model: str = typer.Option("shared-ris-b", "--model", "-m", help="model preset name or YAML path"),
        set_: list[str] = typer.Option([], "--set", help="override, e.g. fpn.name=cris (repeatable)"),
        image_size: int = typer.Option(None, "--image-size", help="input side in pixels (sets encoder.image_size)"),
        text_len: int = typer.Option(20, "--text-len", help="full tokenised text length incl. <s> and </s>"),
        batch_size: int = typer.Option(1, "--batch-size"),
        fmt: str = typer.Option("table", "--format", help="table, csv or json"),
    ) -> None:
        """Params and GFLOPs (fvcore: one multiply-add = one flop) per component and in total."""
        if fmt not in FORMATS:
            raise RisbenchError(f"--format: expected one of {', '.join(FORMATS)}, got '{fmt}'")
        result = flops_report(model, set_, image_size, text_len, batch_size)
        if fmt == "json":
            typer.echo(json.dumps(result, indent=2))
        elif fmt == "csv":
            typer.echo(render_csv(result), nl=False)
        else:
            render_table(result, Console())

    @app.command("efficiency")
    def efficiency_cmd(
        file: Path = typer.Argument(..., help="efficiency experiment YAML, e.g. experiments/efficiency.yaml"),
        out: Path = typer.Option(..., "--out", help="output folder for efficiency.{csv,md,json}"),
    ) -> None:
        """Measure each row's model and write our params/GFLOPs beside the paper's (CSV + Markdown)."""
        from risbench.efficiency import COLUMNS, run_efficiency

        command = shlex.join(["risbench", "efficiency", str(file), "--out", str(out)])
        console = Console(stderr=True)

        def progress(row: dict) -> None:
            console.print(
                f"{row['table']} {row['variant']} [{row['component']}]: {row['ours params (M)']}M / "
                f"{row['ours GFLOPs']} GFLOPs (paper {row['paper params (M)'] or '-'}M / "
                f"{row['paper GFLOPs'] or '-'}G) -> {row['within tolerance']}",
                highlight=False,
                markup=False,
            )

        rows = run_efficiency(file, out, command, progress=progress)
        table = Table(title=f"efficiency -> {out}", title_justify="left")
        for col in COLUMNS[:-1]:
            table.add_column(col)
        for row in rows:
            table.add_row(*(str(row[c]) for c in COLUMNS[:-1]))
        Console().print(table)
