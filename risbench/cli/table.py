"""`risbench table RUNS_DIR`: collect runs into the paper's table layout (CSV, Markdown or LaTeX)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("table")
    def table_cmd(
        runs_dir: Path = typer.Argument(..., help="an experiment's run folder, e.g. runs/fpn_ablation"),
        fmt: str = typer.Option("markdown", "--format", help="csv | markdown | latex"),
        out: Path = typer.Option(None, "--out", help="write here (atomically) instead of stdout"),
        reference: str = typer.Option(
            None,
            "--reference",
            help="the row the others are compared with (default: table.reference, else the last run)",
        ),
        bootstrap: int = typer.Option(
            2000, "--bootstrap", help="bootstrap replicates of the differences (0: differences without interval)"
        ),
        columns: str = typer.Option(
            None,
            "--columns",
            help="comma-separated columns instead of the experiment's, e.g. oiou,p50@shape (<base>@<kind>: "
            "oiou, miou or p50 over one kind of sentence; each such column gets a Δ)",
        ),
    ) -> None:
        """Pivot every metrics.json / flops.json under RUNS_DIR into the paper's layout: mean ± 95% t-interval
        over seeds, and each row's difference from the reference row (paired bootstrap 95% CI)."""
        from risbench.errors import RisbenchError
        from risbench.io import atomic_write_text
        from risbench.runner.export import render
        from risbench.runner.tables import table_for_dir

        if bootstrap < 0:
            raise RisbenchError(f"--bootstrap must be >= 0, got {bootstrap}")
        show = [c.strip() for c in columns.split(",") if c.strip()] if columns is not None else None
        text = render(table_for_dir(runs_dir, reference=reference, replicates=bootstrap, show=show), fmt)
        if out is None:
            print(text, end="" if text.endswith("\n") else "\n")
        else:
            atomic_write_text(out, text)

    @app.command("curve")
    def curve_cmd(
        run_dirs: list[Path] = typer.Argument(..., help="run folders written by `risbench train`"),
        name: list[str] = typer.Option([], "--name", help="a column name per run (default: the folder name)"),
        out: Path = typer.Option(None, "--out", help="write the Markdown here (atomically) instead of stdout"),
        plot: Path = typer.Option(
            None, "--plot", help="also plot the curves: PLOT.png and PLOT.pdf (a .png / .pdf suffix is dropped)"
        ),
    ) -> None:
        """Learning curves: the val oIoU / mIoU each run logged while training, side by side by step."""
        from risbench.io import atomic_write_text
        from risbench.train.curves import curves_markdown

        text = curves_markdown(list(run_dirs), list(name) or None)
        if out is None:
            print(text, end="")
        else:
            atomic_write_text(out, text)
        if plot is not None:
            from risbench.runner.plot_data import curve_frame
            from risbench.runner.plots import plot_curves

            stem = plot.with_suffix("") if plot.suffix.lower() in (".png", ".pdf") else plot
            written = plot_curves(curve_frame(list(run_dirs), list(name) or None), stem)
            print("wrote " + " and ".join(str(p) for p in written))
