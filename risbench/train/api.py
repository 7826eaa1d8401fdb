"""Entry point for one run directory: `train_run` (train or resume or skip, then evaluate). Evaluating a
finished run again (`evaluate_run`, `load_run`) is in risbench.train.reeval.

A run directory holds:
  config.yaml        the resolved config (written first; the model is its full spec)
  train_log.jsonl    one line per logged step (loss terms, lr, throughput, time) and per validation
  checkpoints/       last.pt (every validation, every ckpt_every steps, the end), best.pt (best val oIoU)
  per_sentence.<split>.csv.gz  the final evaluation's counts per sentence (risbench.train.sentences)
  metrics.json       per split metrics + provenance (written last: its presence marks a finished run)
  evals/             results of later `risbench eval` calls
  code_version.json  the code version training started with (risbench.train.codeversion)
  .lock              held by the process that trains the run (risbench.train.lock)
  stale/<version>/   outputs of earlier code, moved aside when the run is trained again (rundir.py)
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from risbench.io import atomic_write_json, atomic_write_text, check_writable, provenance
from risbench.results import METRICS_FILE, Metrics
from risbench.spec import validate_spec
from risbench.train.checkpoint import load_checkpoint, load_model_state, seed_everything
from risbench.train.codeversion import code_version
from risbench.train.components import (
    Components,
    build_components,
    build_split,
    check_first_batches,
    process_settings,
)
from risbench.train.config import RunConfig, resolve_run_config
from risbench.train.distributed import DistInfo, barrier, init_distributed
from risbench.train.evaluate import SwappedText, evaluate_dataset
from risbench.train.lock import run_lock
from risbench.train.metrics import SentenceResult
from risbench.train.precision import precision_name, warn_if_slow_bf16
from risbench.train.rundir import (
    VERSION_FILE,
    check_config,
    is_finished,
    read_metrics,
    remove_unstarted,
    settle_code_version,
)
from risbench.train.sentences import write_per_sentence
from risbench.train.trainer import train


def _roundtrip(d: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(d, sort_keys=False))


def evaluate_splits(
    comp: Components,
    cfg: RunConfig,
    info: DistInfo,
    splits: list[str],
    *,
    threshold: float,
    resolution: str,
    swap_text: bool = False,
    max_samples: int | None = None,
    timings: dict[str, float] | None = None,
    sentences: dict[str, list[SentenceResult]] | None = None,
) -> dict[str, dict[str, Any]]:
    """{split: metrics} for the model in `comp`; every entry names its split, threshold and resolution.
    Seconds per split go to `timings` (kept out of the metrics so that equal runs have equal metrics);
    per-sentence results to `sentences` when given."""
    out = {}
    timings = {} if timings is None else timings
    for split in splits:
        ds = build_split(comp, split, train=False, seed=cfg.seed)
        if swap_text:
            ds = SwappedText(ds, seed=cfg.seed)
        t0 = time.perf_counter()
        metrics, per_sentence = evaluate_dataset(
            comp.model,
            ds,
            comp.collator,
            info,
            threshold=threshold,
            resolution=resolution,
            batch_size=cfg.eval.batch_size,
            amp=cfg.train.amp,
            max_samples=max_samples,
        )
        out[split] = {
            "split": split,
            "threshold": threshold,
            "resolution": resolution,
            "text": "swapped" if swap_text else "original",
            **metrics,
        }
        timings[split] = round(time.perf_counter() - t0, 3)
        if sentences is not None:
            sentences[split] = per_sentence
    return out


def run_provenance(comp: Components, cfg: RunConfig, resolved: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """Where a run's numbers came from: code, packages, device, weights, tokenizer, settings, data."""
    model = comp.model
    return {
        **provenance(info.device, info.world_size, cfg.seed),
        "precision": precision_name(info.device, cfg.train.amp),
        "weights": model.encoder.weights,
        "tokenizer": comp.tokenizer.describe() if hasattr(comp.tokenizer, "describe") else str(comp.tokenizer),
        "threshold": cfg.eval.threshold,
        "resolution": cfg.eval.resolution,
        "image_size": comp.image_size,
        "text_max_len": cfg.tokenizer.max_len,
        "data": resolved["data"],
        "num_params": sum(p.numel() for p in model.parameters()),
    }


def train_run(
    cfg: dict[str, Any],
    run_dir: str | Path,
    *,
    quiet: bool = False,
    resume: bool = True,
    interrupt_after: int | None = None,
) -> dict[str, Any]:
    """Train one run config into `run_dir` and evaluate it; returns the metrics.json content.

    A finished run (metrics.json present, same config) is skipped and its metrics returned. An
    interrupted one resumes from checkpoints/last.pt (unless `resume=False`, which starts over). A started
    run directory holding a different config is an error; one that never started (a config.yaml only) is
    taken over, and a call that fails before its first step removes the folder it created.
    `interrupt_after` stops after that many steps with a checkpoint and returns
    {"interrupted": True, "step": ...} (simulates a preemption).
    Under torchrun every rank calls this; only rank 0 writes files.
    """
    t_start = time.perf_counter()
    run_cfg, resolved = resolve_run_config(cfg)
    run_dir = Path(run_dir)
    resolved["run_dir"] = str(run_dir)
    resolved = _roundtrip(resolved)
    validate_spec(resolved["model"], "model")  # every option checked before anything is written
    info = init_distributed()
    version = code_version(resolved)
    if info.is_main:
        check_writable(run_dir, "run folder")
    created = not run_dir.exists()
    # one writer per run: rank 0 holds run_dir/.lock (RunLocked names the holder)
    with run_lock(run_dir) if info.is_main else contextlib.nullcontext():
        try:
            return _claim_and_train(run_cfg, resolved, run_dir, info, quiet, resume, interrupt_after, t_start, version)
        except BaseException:
            if info.is_main:
                remove_unstarted(run_dir, created)
            raise


def _claim_and_train(
    run_cfg: RunConfig,
    resolved: dict[str, Any],
    run_dir: Path,
    info: DistInfo,
    quiet: bool,
    resume: bool,
    interrupt_after: int | None,
    t_start: float,
    version: str,
) -> dict[str, Any]:
    """Under the run's lock: reuse a finished run of this code, or write config.yaml and train."""
    if resume:
        check_config(run_dir, resolved)
        if info.is_main:  # a run of other code is moved to stale/ and trained again
            settle_code_version(run_dir, version)
        barrier(info)
        if is_finished(run_dir):
            return read_metrics(run_dir).to_dict()
    if info.is_main:
        if not resume:
            for path in (run_dir / METRICS_FILE, run_dir / "train_log.jsonl"):
                path.unlink(missing_ok=True)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        atomic_write_json(run_dir / VERSION_FILE, {"code_version": version})
    barrier(info)
    with process_settings(run_cfg, info.device):
        return _train_and_evaluate(run_cfg, resolved, run_dir, info, quiet, resume, interrupt_after, t_start, version)


def _train_and_evaluate(
    run_cfg: RunConfig,
    resolved: dict[str, Any],
    run_dir: Path,
    info: DistInfo,
    quiet: bool,
    resume: bool,
    interrupt_after: int | None,
    t_start: float,
    version: str,
) -> dict[str, Any]:
    seed_everything(run_cfg.seed)  # before the model is built: its initial weights come from the seed
    if info.is_main:
        warn_if_slow_bf16(info.device, run_cfg.train.amp)
    comp = build_components(run_cfg, resolved, info)
    check_first_batches(comp, run_cfg)  # data checked before compute
    state = train(run_cfg, resolved, run_dir, info, comp, quiet=quiet, resume=resume, interrupt_after=interrupt_after)
    if not state.done:
        return {"interrupted": True, "step": state.step}

    which = run_cfg.eval.checkpoint
    used = "last"
    if which == "best" and (run_dir / "checkpoints" / "best.pt").exists():
        best = run_dir / "checkpoints" / "best.pt"
        load_model_state(comp.model, load_checkpoint(best, info.device), best, resolved["model"])
        used = "best"
    t_eval = time.perf_counter()
    split_seconds: dict[str, float] = {}
    sentences: dict[str, list[SentenceResult]] = {}
    splits = evaluate_splits(
        comp,
        run_cfg,
        info,
        list(run_cfg.eval.splits),
        threshold=run_cfg.eval.threshold,
        resolution=run_cfg.eval.resolution,
        timings=split_seconds,
        sentences=sentences,
    )
    eval_seconds = time.perf_counter() - t_eval
    metrics = Metrics(
        splits=splits,
        train={
            "steps": state.step,
            "epochs_completed": state.epoch,
            "global_batch_size": run_cfg.train.batch_size,
            "train_seconds": round(state.train_seconds, 3),
            "s_per_step": round(state.train_seconds / max(1, state.step), 4),
            "best_step": state.best_step,
            "best_val_oIoU": state.best_score,
            "val_history": state.history,
        },
        provenance={
            **run_provenance(comp, run_cfg, resolved, info),
            "code_version": version,  # of the code this process imported when it started
            "checkpoint": used,
            "timings": {
                "train_seconds": round(state.train_seconds, 3),
                "eval_seconds": round(eval_seconds, 3),
                "eval_seconds_per_split": split_seconds,
                "wall_seconds_this_process": round(time.perf_counter() - t_start, 3),
            },
        },
    )
    if info.is_main:
        for split, items in sentences.items():  # before metrics.json, whose presence marks the run finished
            write_per_sentence(run_dir, split, items, run_cfg.eval.threshold, run_cfg.eval.resolution)
        metrics.write(run_dir / METRICS_FILE)
    barrier(info)
    return metrics.to_dict()
