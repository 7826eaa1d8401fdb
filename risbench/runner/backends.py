"""Where runs execute: `local` (one after another on CPU, or packed onto free GPUs, one subprocess per
GPU), `print` (a runnable torchrun line per run) and `slurm` (one submitit job array).

Every backend works on prepared run directories (config.yaml + run.json written by the sweep), so a
run can be executed anywhere from its folder alone: `execute_run(run_dir)`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from risbench.errors import RisbenchError
from risbench.flops import measure
from risbench.models.segmenter import build_segmenter
from risbench.results import FLOPS_FILE, Flops, Metrics
from risbench.runner.progress import SweepProgress
from risbench.spec import resolve_model_spec
from risbench.train.api import train_run
from risbench.train.codeversion import FLOPS_ROOTS, code_version
from risbench.train.lock import RunLocked, held_by_other, run_lock
from risbench.train.rundir import is_current, is_finished, read_metrics, settle_code_version
from risbench.train.signals import TrainingInterrupted

DEFAULT_TEXT_LEN = 20
LOCK_POLL_S = 1.0  # how often a sweep looks again at a run another process is training


def load_run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RisbenchError(f"{run_dir}: no config.yaml (prepare the run first)")
    return yaml.safe_load(path.read_text()) or {}


def text_len_of(cfg: dict[str, Any]) -> int:
    """The text length FLOPs are measured at: the tokenizer's max length when the config names one."""
    for section in ("tokenizer", "data", "eval"):
        sec = cfg.get(section) or {}
        for key in ("max_len", "max_length", "text_len"):
            if isinstance(sec.get(key), int):
                return sec[key]
    return DEFAULT_TEXT_LEN


def measure_flops(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build the run's model (random init, no data) and count params/FLOPs with risbench.flops.measure."""
    spec = resolve_model_spec(cfg["model"])
    model = build_segmenter(spec)
    model.eval()
    image_size = int(spec["encoder"].get("image_size") or getattr(model.encoder, "image_size", 224))
    return measure(model, image_size, text_len_of(cfg))


def ensure_flops(run_dir: Path, cfg: dict[str, Any] | None = None, cache: dict[str, Flops] | None = None) -> Flops:
    """Write run_dir/flops.json unless it exists and was counted by the current code (its `code_version`,
    the files that build and count the model); `cache` (keyed by model spec) avoids measuring twice."""
    path = Path(run_dir) / FLOPS_FILE
    cfg = cfg if cfg is not None else load_run_config(run_dir)
    version = code_version(cfg, FLOPS_ROOTS)
    if path.is_file():
        old = Flops.read(path)
        if old.code_version == version:
            return old
    key = json.dumps({"model": cfg["model"], "text_len": text_len_of(cfg)}, sort_keys=True, default=str)
    if cache is not None and key in cache:
        result = cache[key]
    else:
        result = Flops(**measure_flops(cfg), code_version=version)
        if cache is not None:
            cache[key] = result
    result.write(path)
    return result


def is_done(run_dir: Path) -> bool:
    """Finished by the current code: metrics.json exists and its code version is the one the run's
    config would be trained with now (a stale run is trained again, or kept with --keep-stale)."""
    if not is_finished(run_dir):
        return False
    try:
        return is_current(run_dir, code_version(load_run_config(run_dir)))
    except RisbenchError:
        return False


def expected_length(run_dir: Path) -> dict[str, Any]:
    """What the progress view can know in advance: the step limit and the time budget of a run."""
    try:
        train = load_run_config(run_dir).get("train") or {}
    except (RisbenchError, OSError, yaml.YAMLError):
        return {}
    minutes = train.get("max_minutes")
    return {"total_steps": train.get("max_steps"), "budget_s": minutes * 60 if minutes else None}


def _train_fn() -> Callable[..., dict]:
    """The function that trains a run (the runner tests replace it with a fake)."""
    return train_run


def execute_run(run_dir: str | Path, quiet: bool = True, keep_stale: bool = False) -> dict[str, Any]:
    """Train + evaluate one prepared run (skip when finished by the current code, resume when interrupted,
    train again when finished by other code unless `keep_stale`), then measure it."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    with run_lock(run_dir):  # RunLocked when another process trains it; never move a running run's files
        settled = settle_code_version(run_dir, code_version(cfg), keep_stale=keep_stale)
        if settled in ("current", "kept") and is_finished(run_dir):
            metrics = read_metrics(run_dir).to_dict()
        else:
            metrics = _train_fn()(cfg, run_dir, quiet=quiet, resume=True)
        ensure_flops(run_dir, cfg)
    return metrics


def _read_metrics(run_dir: Path) -> Metrics | None:
    try:
        return read_metrics(run_dir)
    except RisbenchError:
        return None


def _headline(metrics: Metrics | None, split: str) -> str:
    """'oiou 61.20, miou 60.10' of `split` for the progress view."""
    from risbench.runner.collect import split_metrics

    values = split_metrics(metrics).get(split) if metrics is not None else None
    if not values:
        return ""
    return ", ".join(f"{k} {values[k]:.2f}" for k in ("oiou", "miou") if k in values)


# ---------------------------------------------------------------- local


def free_gpus(min_free_fraction: float = 0.9) -> list[str]:
    """GPU ids to pack runs onto: CUDA_VISIBLE_DEVICES when set, else the GPUs nvidia-smi shows with
    little memory in use; empty on machines without GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
        except (subprocess.SubprocessError, OSError):
            out = ""
        ids = []
        for line in out.strip().splitlines():
            idx, used, total = (x.strip() for x in line.split(","))
            if float(total) > 0 and 1.0 - float(used) / float(total) >= min_free_fraction:
                ids.append(idx)
        if out.strip():
            return ids
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # pragma: no cover - torch without CUDA
        return []


def run_local(
    run_dirs: list[Path],
    progress: SweepProgress,
    split: str = "val",
    gpus: list[str] | None = None,
    keep_stale: bool = False,
) -> list[str]:
    """Run the unfinished runs: in this process one after another when there is no GPU, else one
    subprocess per free GPU (CUDA_VISIBLE_DEVICES) until all are done. Returns the failed run ids."""
    todo = [d for d in run_dirs if not is_done(d)]
    for d in run_dirs:  # finished runs still need their flops.json (e.g. trained elsewhere)
        if d not in todo:
            ensure_flops(d)
    if gpus:
        return _run_on_gpus(todo, progress, split, gpus, keep_stale)
    failed: list[str] = []
    pending = list(todo)
    while pending:  # a run another process holds waits until it is released (finished, or its holder died)
        run_dir = next((d for d in pending if held_by_other(d) is None), None)
        if run_dir is None:
            time.sleep(LOCK_POLL_S)
            continue
        pending.remove(run_dir)
        progress.start_run(run_dir.name, run_dir, "cpu", **expected_length(run_dir))
        try:
            execute_run(run_dir, quiet=True, keep_stale=keep_stale)
        except RunLocked:  # taken between the check and the start
            progress.finish_run(run_dir.name, ok=False, note="taken by another process; waiting for it")
            pending.append(run_dir)
            continue
        except (KeyboardInterrupt, TrainingInterrupted):
            progress.finish_run(run_dir.name, ok=False, note="interrupted")
            raise
        except RisbenchError:
            progress.finish_run(run_dir.name, ok=False)
            raise
        except Exception as exc:  # a crashed run must not stop the sweep
            progress.finish_run(run_dir.name, ok=False, note=f"{type(exc).__name__}: {exc}")
            failed.append(run_dir.name)
            continue
        progress.finish_run(run_dir.name, ok=True, note=_headline(_read_metrics(run_dir), split))
    return failed


def _run_on_gpus(
    todo: list[Path], progress: SweepProgress, split: str, gpus: list[str], keep_stale: bool = False
) -> list[str]:
    queue = list(todo)
    busy: dict[str, tuple[subprocess.Popen, Path, Any]] = {}
    failed: list[str] = []
    try:
        while queue or busy:
            for gpu in gpus:
                if gpu not in busy and queue:
                    run_dir = queue.pop(0)
                    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
                    log = open(run_dir / "worker.log", "ab")  # noqa: SIM115 - closed when the run ends
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "risbench.runner.worker", str(run_dir)]
                        + (["--keep-stale"] if keep_stale else []),
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                    busy[gpu] = (proc, run_dir, log)
                    progress.start_run(run_dir.name, run_dir, f"gpu {gpu}", **expected_length(run_dir))
            time.sleep(1.0)
            for gpu, (proc, run_dir, log) in list(busy.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del busy[gpu]
                ok = proc.returncode == 0 and is_finished(run_dir)
                note = (
                    _headline(_read_metrics(run_dir), split)
                    if ok
                    else f"exit {proc.returncode}, see {run_dir}/worker.log"
                )
                if not ok:
                    failed.append(run_dir.name)
                progress.finish_run(run_dir.name, ok=ok, note=note)
    except KeyboardInterrupt:
        for proc, _run_dir, log in busy.values():
            proc.terminate()
            log.close()
        raise
    return failed


# ---------------------------------------------------------------- print


def nproc_of(run_dir: Path, default: int = 1) -> int:
    """Processes (GPUs) per run: the run's train.nproc_per_node (the paper recipe: 8), else `default`."""
    value = (load_run_config(run_dir).get("train") or {}).get("nproc_per_node")
    return value if isinstance(value, int) and value > 0 else default


def torchrun_line(run_dir: Path, nproc: int) -> str:
    return (
        f"torchrun --standalone --nproc-per-node {nproc} -m risbench.cli.launch "
        f"{shlex.quote(str(Path(run_dir) / 'config.yaml'))}"
    )


def run_print(run_dirs: list[Path], nproc: int | None = None) -> list[str]:
    """One runnable torchrun line per unfinished run (finished ones as comments)."""
    lines = []
    for run_dir in run_dirs:
        if is_done(run_dir):
            lines.append(f"# done: {run_dir}")
            continue
        k = nproc or nproc_of(run_dir)
        lines.append(torchrun_line(run_dir, k))
    return lines
