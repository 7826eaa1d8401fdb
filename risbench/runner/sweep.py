"""`risbench run`: prepare the run folders of an experiment, hand them to a backend, build the table.

runs/<experiment>/experiment.json            the layout `risbench table` uses (row order, table block)
runs/<experiment>/<run_id>/{config.yaml, run.json, metrics.json, flops.json, train_log.jsonl, checkpoints/}
results/<experiment>/table.{csv,md,tex}      (flops.{csv,md,tex} with --flops-only) + command.txt
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from collections import Counter
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from risbench.io import atomic_write_json, atomic_write_text, git_text
from risbench.results import RUN_FILE, Flops, RunInfo
from risbench.runner import backends, export, tables
from risbench.runner.columns import COST
from risbench.runner.columns import label as column_label
from risbench.runner.experiment import Experiment, Run
from risbench.runner.pretrained import without_encoder_options
from risbench.runner.progress import SweepProgress
from risbench.train.rundir import is_finished, is_started, read_metrics


def prepare_runs(exp: Experiment, runs: list[Run], runs_dir: Path) -> list[Path]:
    """Create each run's folder with its resolved config.yaml and run.json, and the experiment's layout."""
    exp_dir = Path(runs_dir) / exp.name
    exp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(exp_dir / "experiment.json", exp.meta())
    dirs = []
    for run in runs:
        run_dir = exp.run_dir(runs_dir, run)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not is_started(run_dir) and not is_finished(run_dir):  # then train_run owns it
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(run.config, sort_keys=False))
        info = RunInfo(
            experiment=exp.name,
            variant=run.variant,
            seed=run.seed,
            index=run.index,
            run_id=run.run_id,
            config_hash=run.config_hash,
        )
        info.write(run_dir / RUN_FILE)
        dirs.append(run_dir)
    return dirs


def run_status(exp: Experiment, run: Run, runs_dir: Path, reuse: bool = True) -> str:
    """done | stale | partial | reusable (<source>) | new: what `risbench run` would do with the run."""
    from risbench.runner.reuse import find_source

    run_dir = exp.run_dir(runs_dir, run)
    if backends.is_done(run_dir):
        return "done"
    if is_finished(run_dir):
        return "stale"
    if is_started(run_dir):
        return "partial"
    source = find_source(runs_dir, exp.name, run) if reuse else None
    return "new" if source is None else f"reusable ({source})"


def dry_run_table(exp: Experiment, runs: list[Run], runs_dir: Path, reuse: bool = True) -> Table:
    table = Table(
        title=f"{exp.name} ({exp.path}): {len(runs)} runs under {Path(runs_dir) / exp.name}/", title_justify="left"
    )
    for col in ("run id", "variant", "seed", "status"):
        table.add_column(col, overflow="fold")
    for run in runs:
        table.add_row(run.run_id, run.variant, str(run.seed), run_status(exp, run, runs_dir, reuse))
    return table


def machine() -> str:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else "no GPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from risbench.io import cpu_model

    cpu = f"{cpu_model() or platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()})"
    return (
        f"{platform.node()}; {platform.platform()}; {cpu}; {cores} CPU cores, {torch.get_num_threads()} torch "
        f"threads; {gpu}; python {platform.python_version()}; torch {torch.__version__}"
    )


def run_precisions(exp_dir: Path, run_ids: list[str]) -> str:
    """What the finished runs trained in, from their metrics.json ("bf16 autocast (12 runs)"): one recipe
    runs in bf16 on one CPU and in fp32 on another (risbench/train/precision.py)."""
    counts = Counter(
        read_metrics(exp_dir / run_id).provenance.get("precision", "not recorded")
        for run_id in run_ids
        if is_finished(exp_dir / run_id)
    )
    return "; ".join(f"{k} ({n} run{'s' * (n != 1)})" for k, n in sorted(counts.items())) or "no finished run"


def provenance_text(command: list[str], exp: Experiment, runs_dir: Path, seconds: float | None = None) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"command: {shlex.join(command)}",
        f"experiment: {exp.path} ({len(exp.runs)} runs: {', '.join(r.run_id for r in exp.runs)})",
        f"runs: {Path(runs_dir) / exp.name}",
        f"date: {now}",
        f"machine: {machine()}",
        f"git commit: {git_text()}",
        f"precision: {run_precisions(Path(runs_dir) / exp.name, [r.run_id for r in exp.runs])}",
    ]
    if seconds is not None:
        lines.append(f"wall time of this invocation: {seconds:.0f} s")
    return "\n".join(lines) + "\n"


def write_results(
    exp: Experiment,
    runs_dir: Path,
    results_dir: Path,
    command: list[str],
    stem: str = "table",
    seconds: float | None = None,
    columns: list[str] | None = None,
) -> tuple[tables.TableData, Path]:
    """Build the table of this expansion's runs and write <results>/<name>/<stem>.{csv,md,tex} + command.txt."""
    exp_dir = Path(runs_dir) / exp.name
    table = tables.table_for_dir(exp_dir, [r.run_id for r in exp.runs], columns=columns)
    out = Path(results_dir) / exp.name
    # provenance first: the tables about to be written may be tracked files, and must not count as changes
    provenance = provenance_text(command, exp, runs_dir, seconds)
    for fmt, ext in (("csv", "csv"), ("markdown", "md"), ("latex", "tex")):
        atomic_write_text(out / f"{stem}.{ext}", export.render(table, fmt))
    atomic_write_text(out / "command.txt", provenance)
    return table, out


def write_plots(exp: Experiment, table: tables.TableData, runs_dir: Path, out: Path) -> list[Path]:
    """The plots of this expansion's runs next to its table (risbench.runner.plots); the paths written."""
    from risbench.runner.plots import experiment_plots

    exp_dir = Path(runs_dir) / exp.name
    run_dirs = [exp_dir / r.run_id for r in exp.runs if (exp_dir / r.run_id).is_dir()]
    return experiment_plots(table, run_dirs, out, split=exp.table.split, cost_scope=exp.table.cost)


def efficiency_table(table: tables.TableData, title: str) -> Table:
    """The Params/GFLOPs columns (ours and the paper's) as a rich table for the terminal."""
    out = Table(title=title, title_justify="left")
    out.add_column("variant", style="bold", overflow="fold")
    cols = [c for c in COST if c in table.mean.columns]
    for c in cols:
        out.add_column(column_label(c), justify="right")
    paper_cols = [c for c in COST if c in table.paper.columns]
    for c in paper_cols:
        out.add_column(f"paper {column_label(c)}", justify="right")
    for v in table.mean.index:
        row = [v] + [export.fmt_value(table.mean.loc[v, c], c) or "–" for c in cols]
        row += [export.fmt_paper(table.paper.loc[v, c], c) or "–" for c in paper_cols]
        out.add_row(*row)
    return out


def flops_only(exp: Experiment, run_dirs: list[Path], console: Console) -> None:
    """Measure every run's model (each distinct spec once) and write flops.json; no data, no training."""
    cache: dict[str, Flops] = {}
    missing = {ref.name for ref in exp.pretrains() if not ref.exists()}  # checked once each: it hashes every file
    ref_of = {run.run_id: run.pretrain for run in exp.runs}
    for run_dir in run_dirs:
        cfg = backends.load_run_config(run_dir)
        ref = ref_of.get(run_dir.name)
        if ref is not None and ref.name in missing:  # weights change no count: build without them
            enc = without_encoder_options(cfg["model"]["encoder"], ref.encoder_options)
            cfg = {**cfg, "model": {**cfg["model"], "encoder": enc}}
        params, flops = backends.ensure_flops(run_dir, cfg=cfg, cache=cache).count("total")
        console.print(
            f"{run_dir.name}: {(params or 0) / 1e6:.2f} M params, {(flops or 0) / 1e9:.2f} GFLOPs", highlight=False
        )


def command_line() -> list[str]:
    """The command as the user typed it (risbench ... rather than a python path)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("risbench", "__main__.py", "main.py"):
        argv[0] = "risbench"
    return argv


def run_sweep(
    exp: Experiment,
    runs: list[Run],
    runs_dir: Path,
    progress: SweepProgress | None = None,
    gpus: list[str] | None = None,
    keep_stale: bool = False,
    run_dirs: list[Path] | None = None,
) -> list[str]:
    """Local backend: the unfinished runs, one after another (or packed onto GPUs). Returns failed run ids.
    `run_dirs`: what `prepare_runs` returned for `runs`, when the caller already prepared them."""
    run_dirs = run_dirs if run_dirs is not None else prepare_runs(exp, runs, runs_dir)
    done = sum(backends.is_done(d) for d in run_dirs)
    progress = progress or SweepProgress(f"{exp.name}", total=len(run_dirs), done=done)
    with progress:
        return backends.run_local(run_dirs, progress, split=exp.table.split, gpus=gpus, keep_stale=keep_stale)
