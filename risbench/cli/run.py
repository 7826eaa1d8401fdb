"""`risbench run FILE`: parse the options; `risbench.runner.run.run_experiment` does the rest."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add `risbench run` to `app`."""

    @app.command("run")
    def run_cmd(
        file: Path = typer.Argument(..., help="experiment file (experiments/*.yaml)"),
        set_: list[str] = typer.Option([], "--set", help="override for every run, e.g. train.epochs=1"),
        flops_only: bool = typer.Option(False, "--flops-only", help="only build each model and count params/FLOPs"),
        shard: str = typer.Option(None, "--shard", help="i/n: run only every n-th run starting at i (0-based)"),
        backend: str = typer.Option("local", "--backend", help="local | print | slurm"),
        dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and their status; run nothing"),
        runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where run folders go"),
        results_dir: Path = typer.Option(Path("results"), "--results-dir", help="where tables go"),
        gpus: str = typer.Option("auto", "--gpus", help="local: auto (free GPUs), none (CPU), or ids like 0,1"),
        nproc: int = typer.Option(None, "--nproc", help="print/slurm: processes (GPUs) per run; default from recipe"),
        executor: str = typer.Option("slurm", "--executor", help="slurm backend: slurm | local | debug (submitit)"),
        wait: bool = typer.Option(False, "--wait", help="slurm backend: wait for the jobs, then build the table"),
        partition: str = typer.Option(None, "--partition", help="slurm partition"),
        timeout_min: int = typer.Option(24 * 60, "--timeout-min", help="slurm time limit per run (minutes)"),
        plots: bool = typer.Option(
            True, "--plots/--no-plots", help="also write curves, IoU by size, metrics and cost plots (PNG + PDF)"
        ),
        keep_stale: bool = typer.Option(
            False,
            "--keep-stale",
            help="local: keep finished runs of other code (marked stale in the table) instead of re-running them",
        ),
        reuse: bool = typer.Option(
            True,
            "--reuse/--no-reuse",
            help="take a finished run of another experiment under --runs-dir with the same config hash",
        ),
    ) -> None:
        """Run an experiment: every run (variant x grid x seed) trained, evaluated and measured, then the table."""
        from risbench.runner.run import RunOptions, run_experiment

        opts = RunOptions(
            overrides=list(set_),
            flops_only=flops_only,
            shard=shard,
            backend=backend,
            dry_run=dry_run,
            runs_dir=runs_dir,
            results_dir=results_dir,
            gpus=gpus,
            nproc=nproc,
            executor=executor,
            wait=wait,
            partition=partition,
            timeout_min=timeout_min,
            plots=plots,
            keep_stale=keep_stale,
            reuse=reuse,
        )
        rc = run_experiment(file, opts, Console())
        if rc:
            raise typer.Exit(rc)
