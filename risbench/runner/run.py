"""What `risbench run FILE` does once its options are parsed: expand, dispatch to a backend, write the table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from risbench.errors import RisbenchError
from risbench.io import check_writable
from risbench.runner import backends, sweep
from risbench.runner.experiment import load_experiment, parse_shard, shard_runs
from risbench.runner.export import to_markdown
from risbench.runner.pretrained import ensure_pretrained
from risbench.runner.reuse import reuse_finished
from risbench.runner.slurm import require_submitit, run_slurm

BACKENDS = ("local", "print", "slurm")


@dataclass
class RunOptions:
    """The options of `risbench run` (see `risbench run --help`)."""

    overrides: list[str]
    flops_only: bool = False
    shard: str | None = None
    backend: str = "local"
    dry_run: bool = False
    runs_dir: Path = Path("runs")
    results_dir: Path = Path("results")
    gpus: str = "auto"
    nproc: int | None = None
    executor: str = "slurm"
    wait: bool = False
    partition: str | None = None
    timeout_min: int = 24 * 60
    plots: bool = True
    keep_stale: bool = False
    reuse: bool = True


def parse_gpus(option: str) -> list[str] | None:
    """--gpus: 'none' (CPU), 'auto' (this machine's free GPUs, CPU when there are none) or ids '0,1'."""
    if option == "none":
        return None
    if option == "auto":
        return backends.free_gpus() or None
    return [g.strip() for g in option.split(",") if g.strip()]


def run_experiment(file: Path, opts: RunOptions, console: Console) -> int:
    """Run an experiment file with `opts`; returns the exit code (1 when a local run failed)."""
    if opts.backend not in BACKENDS:
        raise RisbenchError(f"--backend: unknown backend '{opts.backend}'; known: {', '.join(BACKENDS)}")
    started = time.time()
    exp = load_experiment(file, opts.overrides)
    runs = shard_runs(exp.runs, parse_shard(opts.shard))
    command = sweep.command_line()
    runs_dir = opts.runs_dir

    if opts.dry_run:
        console.print(sweep.dry_run_table(exp, runs, runs_dir, reuse=opts.reuse))
        return 0

    check_writable(runs_dir, "--runs-dir")  # before any run is prepared or trained
    check_writable(opts.results_dir, "--results-dir")
    if opts.backend == "slurm":
        require_submitit()

    if opts.flops_only:
        run_dirs = sweep.prepare_runs(exp, runs, runs_dir)
        sweep.flops_only(exp, run_dirs, console)
        table, out = sweep.write_results(
            exp,
            runs_dir,
            opts.results_dir,
            command,
            stem="flops",
            seconds=time.time() - started,
            columns=["params", "gflops"],
        )
        console.print(sweep.efficiency_table(table, f"{exp.name}: efficiency"))
        console.print(table.caption, highlight=False)
        console.print(f"wrote {out}/flops.{{csv,md,tex}}")
        return 0

    failed: list[str] = []
    run_dirs = sweep.prepare_runs(exp, runs, runs_dir)
    if opts.reuse:  # before any pretraining: a sweep whose runs all exist elsewhere needs none
        reuse_finished(exp, runs, runs_dir, say=lambda line: console.print(line, highlight=False))
    to_train = [r for r in runs if not backends.is_done(exp.run_dir(runs_dir, r))]
    if opts.backend == "print":
        for ref in exp.pretrains(to_train):
            if not ref.exists():
                print(f"# first, once: risbench pretrain {ref.config_name}")
        print(f"# {exp.name}: {len(run_dirs)} runs; after they finish: risbench table {runs_dir / exp.name}")
        for line in backends.run_print(run_dirs, opts.nproc):
            print(line)
        return 0
    for ref in exp.pretrains(to_train):  # once each, before any run trains; a finished artifact is reused
        ensure_pretrained(ref)
    if opts.backend == "slurm":
        jobs = run_slurm(
            run_dirs,
            Path(runs_dir) / exp.name / ".submitit",
            executor=opts.executor,
            nproc=opts.nproc,
            timeout_min=opts.timeout_min,
            partition=opts.partition,
            wait=opts.wait,
        )
        ids = ", ".join(str(j.job_id) for j in jobs) or "none (all runs finished)"
        console.print(f"submitted {len(jobs)} jobs: {ids}", highlight=False)
        if not opts.wait and jobs:
            console.print(f"when they finish: risbench table {runs_dir / exp.name} --format latex")
            return 0
    else:
        failed = sweep.run_sweep(
            exp, runs, runs_dir, gpus=parse_gpus(opts.gpus), keep_stale=opts.keep_stale, run_dirs=run_dirs
        )
        if failed:
            console.print(f"[red]{len(failed)} runs failed: {', '.join(failed)}[/red]")

    table, out = sweep.write_results(exp, runs_dir, opts.results_dir, command, seconds=time.time() - started)
    console.print(f"wrote {out}/table.{{csv,md,tex}} and command.txt", highlight=False)
    if opts.plots:
        plots = sweep.write_plots(exp, table, runs_dir, out)
        stems = sorted({p.stem for p in plots})
        if stems:
            console.print(f"wrote {out}/{{{','.join(stems)}}}.{{png,pdf}}", highlight=False)
    print(to_markdown(table))
    return 1 if failed else 0
