"""`risbench run FILE`: expand an experiment into runs, train/evaluate/measure them, write the table."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from risbench.errors import RisbenchError

BACKENDS = ("local", "print", "slurm")


def _gpus(option: str) -> list[str] | None:
    from risbench.runner.backends import free_gpus

    if option == "none":
        return None
    if option == "auto":
        return free_gpus() or None
    return [g.strip() for g in option.split(",") if g.strip()]


def register(app: typer.Typer) -> None:
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
    ) -> None:
        """Run an experiment: every run (variant x grid x seed) trained, evaluated and measured, then the table."""
        from risbench.runner import backends, sweep
        from risbench.runner.experiment import load_experiment, parse_shard, shard_runs

        if backend not in BACKENDS:
            raise RisbenchError(f"--backend: unknown backend '{backend}'; known: {', '.join(BACKENDS)}")
        started = time.time()
        console = Console()
        exp = load_experiment(file, set_)
        runs = shard_runs(exp.runs, parse_shard(shard))
        command = sweep.command_line()

        if dry_run:
            console.print(sweep.dry_run_table(exp, runs, runs_dir))
            return

        if flops_only:
            run_dirs = sweep.prepare_runs(exp, runs, runs_dir)
            sweep.flops_only(exp, run_dirs, console)
            table, out = sweep.write_results(
                exp,
                runs_dir,
                results_dir,
                command,
                stem="flops",
                seconds=time.time() - started,
                columns=["params", "gflops"],
            )
            console.print(sweep.efficiency_table(table, f"{exp.name}: efficiency"))
            console.print(table.caption, highlight=False)
            console.print(f"wrote {out}/flops.{{csv,md,tex}}")
            return

        if backend == "print":
            run_dirs = sweep.prepare_runs(exp, runs, runs_dir)
            if exp.pretrain is not None and not exp.pretrain.exists():
                print(f"# first, once: risbench pretrain {exp.pretrain.name.rsplit('-', 1)[0]}")
            print(f"# {exp.name}: {len(run_dirs)} runs; after they finish: risbench table {runs_dir / exp.name}")
            for line in backends.run_print(run_dirs, nproc):
                print(line)
            return

        if exp.pretrain is not None:  # once, before any run trains; a finished artifact is reused
            from risbench.runner.pretrained import ensure_pretrained

            ensure_pretrained(exp.pretrain)
        if backend == "slurm":
            run_dirs = sweep.prepare_runs(exp, runs, runs_dir)
            from risbench.runner.slurm import run_slurm

            jobs = run_slurm(
                run_dirs,
                Path(runs_dir) / exp.name / ".submitit",
                executor=executor,
                nproc=nproc,
                timeout_min=timeout_min,
                partition=partition,
                wait=wait,
            )
            ids = ", ".join(str(j.job_id) for j in jobs) or "none (all runs finished)"
            console.print(f"submitted {len(jobs)} jobs: {ids}", highlight=False)
            if not wait and jobs:
                console.print(f"when they finish: risbench table {runs_dir / exp.name} --format latex")
                return
        else:
            failed = sweep.run_sweep(exp, runs, runs_dir, gpus=_gpus(gpus))
            if failed:
                console.print(f"[red]{len(failed)} runs failed: {', '.join(failed)}[/red]")

        table, out = sweep.write_results(exp, runs_dir, results_dir, command, seconds=time.time() - started)
        console.print(f"wrote {out}/table.{{csv,md,tex}} and command.txt", highlight=False)
        print(tables_markdown(table))
        if backend == "local" and failed:
            raise typer.Exit(1)


def tables_markdown(table) -> str:
    from risbench.runner.export import to_markdown

    return to_markdown(table)
