"""Reuse a finished run of another experiment whose config is the same (`risbench run`, default on).

Two experiments often share rows: `pretraining`'s `pretrained` runs are `fpn_ablation`'s `shared` runs (the
same resolved config, so the same hash in the run id). Training them twice costs minutes per run on a CPU
and gives the same numbers (the same seed gives the same metrics). A run folder of this experiment that has
not started adopts such a run: its files are hard-linked (copied where links fail) into the new folder, the
new folder keeps its own config.yaml and run.json, metrics.json comes last (so an interrupted adoption is
never a finished run), and `reused.json` records where the results came from. `--no-reuse` trains anyway.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from risbench.errors import RisbenchError
from risbench.io import atomic_write_json
from risbench.results import METRICS_FILE
from risbench.runner import backends
from risbench.runner.experiment import Experiment, Run, config_hash
from risbench.train.config import comparable
from risbench.train.lock import RunLocked, run_lock
from risbench.train.rundir import is_finished, is_started

REUSED_FILE = "reused.json"
OWN_FILES = ("config.yaml", "run.json", ".lock", REUSED_FILE)  # the new folder's own; never taken from the source


@dataclass
class Reuse:
    """A finished run (`source`) whose results a new run folder (`target`) takes."""

    target: Path
    source: Path


def find_source(runs_dir: Path, exp_name: str, run: Run) -> Path | None:
    """A finished, current run of another experiment under `runs_dir` with this run's config hash, checked
    by recomputing the hash from its config.yaml (the id alone is not trusted)."""
    for candidate in sorted(Path(runs_dir).glob(f"*/*-{run.config_hash}")):
        if candidate.parent.name == exp_name or not candidate.is_dir():
            continue
        if not backends.is_done(candidate):
            continue
        try:
            cfg = backends.load_run_config(candidate)
        except RisbenchError:
            continue
        if config_hash(comparable(cfg)) == run.config_hash:
            return candidate
    return None


def plan_reuse(exp: Experiment, runs: list[Run], runs_dir: Path) -> list[Reuse]:
    """The runs of `exp` that have not started and can take a finished run of another experiment."""
    plan = []
    for run in runs:
        target = exp.run_dir(runs_dir, run)
        if is_started(target) or is_finished(target):
            continue
        source = find_source(runs_dir, exp.name, run)
        if source is not None:
            plan.append(Reuse(target, source))
    return plan


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def adopt(reuse: Reuse) -> None:
    """Bring the source's files into the target folder (prepared by the sweep), metrics.json last."""
    src, dst = reuse.source, reuse.target
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.relative_to(src).parts[0] not in OWN_FILES)
    for path in files:
        if path != src / METRICS_FILE:
            _link_or_copy(path, dst / path.relative_to(src))
    atomic_write_json(dst / REUSED_FILE, {"source": str(src), "config_hash": dst.name.rsplit("-", 1)[-1]})
    _link_or_copy(src / METRICS_FILE, dst / METRICS_FILE)


def reuse_finished(exp: Experiment, runs: list[Run], runs_dir: Path, say=print) -> int:
    """Adopt every reusable run of this expansion; returns how many. `say` reports each one."""
    done = 0
    for reuse in plan_reuse(exp, runs, runs_dir):
        try:
            with run_lock(reuse.target):  # another sweep on this experiment may be at the same run
                if is_started(reuse.target) or is_finished(reuse.target):
                    continue
                adopt(reuse)
        except RunLocked:
            continue
        done += 1
        say(f"{reuse.target.name}: reused the finished run {reuse.source} (the same config hash; --no-reuse trains it)")
    return done
