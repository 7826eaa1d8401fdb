"""The state of a run directory, and what `train_run` may do with it before training.

A run directory is *started* once training has written to it (train_log.jsonl or checkpoints/), and
*finished* once metrics.json exists. A directory that only holds a config.yaml (a run that failed before
its first step) holds nothing to lose: it never blocks the corrected command.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from risbench.errors import RisbenchError
from risbench.io import atomic_write_json
from risbench.results import METRICS_FILE, Metrics
from risbench.train.config import comparable


def is_started(run_dir: Path) -> bool:
    """Training has written to the folder (a log line or a checkpoint)."""
    run_dir = Path(run_dir)
    return (run_dir / "train_log.jsonl").is_file() or (run_dir / "checkpoints").is_dir()


def is_finished(run_dir: Path) -> bool:
    """The run's metrics.json exists (train_run writes it last)."""
    return (Path(run_dir) / METRICS_FILE).is_file()


def read_metrics(run_dir: Path) -> Metrics:
    """A finished run's metrics.json; a corrupt one is a RisbenchError naming the file."""
    return Metrics.read(Path(run_dir) / METRICS_FILE)


def check_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    """A started run directory must hold the same config (up to volatile keys) as the one asked for."""
    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.exists() or not (is_started(run_dir) or is_finished(run_dir)):
        return  # nothing yet, or a run that never started: its config.yaml is rewritten
    try:
        old = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError:
        old = None
    if not isinstance(old, dict) or comparable(old) != comparable(resolved):
        raise RisbenchError(
            f"{run_dir} holds a run with a different config; choose another --run-dir, or delete it, "
            f"or pass --no-resume to start over there"
        )


def remove_unstarted(run_dir: Path, created: bool) -> None:
    """After a failure before the first step: remove the config.yaml this call wrote (and the folder when
    this call created it), so that a failed command leaves nothing behind."""
    run_dir = Path(run_dir)
    if is_started(run_dir) or is_finished(run_dir):
        return
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------- code version (stale runs)

VERSION_FILE = "code_version.json"  # the code version a started run trains with (written before step 1)
STALE_FILE = "stale.json"  # a finished run of other code, kept on request (`risbench run --keep-stale`)
OUTPUTS = (METRICS_FILE, "train_log.jsonl", "checkpoints", "evals", VERSION_FILE, STALE_FILE)


def recorded_version(run_dir: Path) -> str | None:
    """The code version that produced a finished run (metrics.json) or trains a started one; None when
    unknown (a run from before code versions)."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return read_metrics(run_dir).code_version
    try:
        return json.loads((run_dir / VERSION_FILE).read_text()).get("code_version")
    except (OSError, ValueError, AttributeError):
        return None


def is_current(run_dir: Path, version: str) -> bool:
    """A finished run produced by the code version `version`."""
    return is_finished(run_dir) and recorded_version(run_dir) == version


def archive_stale(run_dir: Path, old: str | None) -> Path:
    """Move a run's outputs (metrics, log, checkpoints, evals) to stale/<old version>/, so that the run can
    be trained again by the current code and nothing finished is lost. Returns the archive folder."""
    run_dir = Path(run_dir)
    base = run_dir / "stale" / (old or "unknown")
    dest, n = base, 1
    while dest.exists():
        n += 1
        dest = base.with_name(f"{base.name}-{n}")
    dest.mkdir(parents=True)
    for name in (*OUTPUTS, *(p.name for p in run_dir.glob("per_sentence.*"))):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), str(dest / name))
    return dest


def settle_code_version(run_dir: Path, version: str, keep_stale: bool = False) -> str:
    """Make a run folder consistent with the code version `version` before it is reused or trained:
    'new' (nothing started), 'current' (started or finished by this code), 'kept' (finished by other code
    and `keep_stale`: marked stale.json, reused) or 'archived' (other code: outputs moved to stale/)."""
    run_dir = Path(run_dir)
    if not (is_started(run_dir) or is_finished(run_dir)):
        return "new"
    old = recorded_version(run_dir)
    if old == version:
        (run_dir / STALE_FILE).unlink(missing_ok=True)
        return "current"
    if keep_stale and is_finished(run_dir):
        atomic_write_json(run_dir / STALE_FILE, {"code_version": old, "current_code_version": version})
        return "kept"
    archive_stale(run_dir, old)
    return "archived"
