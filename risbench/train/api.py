"""Entry points for one run directory: `train_run` (train or resume or skip, then evaluate), `evaluate_run`,
`load_run`.

`evaluate_run` re-evaluates a run directory with other splits / threshold / resolution, or with swapped
expressions.

A run directory holds:
  config.yaml        the resolved config (written first; the model is its full spec)
  train_log.jsonl    one line per logged step (loss terms, lr, throughput, time) and per validation
  checkpoints/       last.pt (every validation, every ckpt_every steps, the end), best.pt (best val oIoU)
  per_sentence.<split>.csv.gz  the final evaluation's counts per sentence (risbench.train.sentences)
  metrics.json       per split metrics + provenance (written last: its presence marks a finished run)
  evals/             results of later `risbench eval` calls
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from risbench.errors import RisbenchError
from risbench.io import atomic_write_json, atomic_write_text, provenance
from risbench.train.checkpoint import load_checkpoint, seed_everything
from risbench.train.components import Components, build_components, build_split, process_settings
from risbench.train.config import RunConfig, comparable, resolve_run_config
from risbench.train.distributed import DistInfo, barrier, init_distributed
from risbench.train.evaluate import SwappedText, evaluate_dataset, per_sentence_csv
from risbench.train.metrics import SentenceResult
from risbench.train.sentences import per_sentence_path, write_per_sentence
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


def _provenance(comp: Components, cfg: RunConfig, resolved: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    model = comp.model
    return {
        **provenance(info.device, info.world_size, cfg.seed),
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
    interrupted one resumes from checkpoints/last.pt (unless `resume=False`, which starts over). A run
    directory holding a different config is an error. `interrupt_after` stops after that many steps
    with a checkpoint and returns {"interrupted": True, "step": ...} (simulates a preemption).
    Under torchrun every rank calls this; only rank 0 writes files.
    """
    t_start = time.perf_counter()
    run_cfg, resolved = resolve_run_config(cfg)
    run_dir = Path(run_dir)
    resolved["run_dir"] = str(run_dir)
    resolved = _roundtrip(resolved)
    info = init_distributed()
    cfg_path, metrics_path = run_dir / "config.yaml", run_dir / "metrics.json"
    if cfg_path.exists() and resume:
        old = yaml.safe_load(cfg_path.read_text()) or {}
        if comparable(old) != comparable(resolved):
            raise RisbenchError(
                f"{run_dir} holds a run with a different config; choose another --run-dir, or delete it, "
                f"or pass --no-resume to start over there"
            )
        if metrics_path.exists():
            return json.loads(metrics_path.read_text())
    if info.is_main:
        if not resume:
            for path in (metrics_path, run_dir / "train_log.jsonl"):
                path.unlink(missing_ok=True)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, yaml.safe_dump(resolved, sort_keys=False))
    barrier(info)

    with process_settings(run_cfg, info.device):
        return _train_and_evaluate(run_cfg, resolved, run_dir, info, quiet, resume, interrupt_after, t_start)


def _train_and_evaluate(
    run_cfg: RunConfig,
    resolved: dict[str, Any],
    run_dir: Path,
    info: DistInfo,
    quiet: bool,
    resume: bool,
    interrupt_after: int | None,
    t_start: float,
) -> dict[str, Any]:
    metrics_path = run_dir / "metrics.json"
    seed_everything(run_cfg.seed)  # before the model is built: its initial weights come from the seed
    comp = build_components(run_cfg, resolved, info)
    state = train(run_cfg, resolved, run_dir, info, comp, quiet=quiet, resume=resume, interrupt_after=interrupt_after)
    if not state.done:
        return {"interrupted": True, "step": state.step}

    which = run_cfg.eval.checkpoint
    used = "last"
    if which == "best" and (run_dir / "checkpoints" / "best.pt").exists():
        comp.model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt", info.device)["model"])
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
    metrics = {
        "splits": splits,
        "train": {
            "steps": state.step,
            "epochs_completed": state.epoch,
            "global_batch_size": run_cfg.train.batch_size,
            "train_seconds": round(state.train_seconds, 3),
            "s_per_step": round(state.train_seconds / max(1, state.step), 4),
            "best_step": state.best_step,
            "best_val_oIoU": state.best_score,
            "val_history": state.history,
        },
        "provenance": {
            **_provenance(comp, run_cfg, resolved, info),
            "checkpoint": used,
            "timings": {
                "train_seconds": round(state.train_seconds, 3),
                "eval_seconds": round(eval_seconds, 3),
                "eval_seconds_per_split": split_seconds,
                "wall_seconds_this_process": round(time.perf_counter() - t_start, 3),
            },
        },
    }
    if info.is_main:
        for split, items in sentences.items():  # before metrics.json, whose presence marks the run finished
            write_per_sentence(run_dir, split, items, run_cfg.eval.threshold, run_cfg.eval.resolution)
        atomic_write_json(metrics_path, metrics)
    barrier(info)
    return metrics


def load_run(
    run_dir: str | Path, checkpoint: str = "auto", info: DistInfo | None = None, overrides: list[str] | None = None
):
    """(RunConfig, resolved dict, Components with weights loaded, checkpoint used) of a run directory, or of a
    run config file with a checkpoint path (risbench.train.weights: a released model's file). checkpoint: auto
    (the one the run's metrics came from: eval.checkpoint, falling back to last), best, last, or a path."""
    from risbench.train.weights import load_model_weights, read_target

    run_dir, resolved, is_run = read_target(run_dir, overrides)
    cfg, _ = resolve_run_config(resolved)
    if not is_run and checkpoint in ("auto", "best", "last"):
        raise RisbenchError(f"a run config has no checkpoints of its own: give --checkpoint PATH (not {checkpoint})")
    info = info or init_distributed()
    comp = build_components(cfg, resolved, info)
    ckpts = run_dir / "checkpoints"
    if checkpoint == "auto":
        checkpoint = cfg.eval.checkpoint
        if not (ckpts / f"{checkpoint}.pt").exists():
            checkpoint = "last"
    path = Path(checkpoint) if checkpoint not in ("best", "last") else ckpts / f"{checkpoint}.pt"
    if not path.exists():
        raise RisbenchError(f"{path}: no such checkpoint (has the run trained?)")
    load_model_weights(comp.model, path)
    comp.model.eval()
    return cfg, resolved, comp, str(path)


def evaluate_run(
    run_dir: str | Path,
    *,
    splits: list[str] | None = None,
    threshold: float | None = None,
    resolution: str | None = None,
    swap_text: bool = False,
    checkpoint: str = "auto",
    max_samples: int | None = None,
    write: bool = True,
    per_sentence: bool = False,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run again; writes run_dir/evals/<name>.json (and, with `per_sentence`,
    <name>.<split>.csv with one row per sentence) and returns the JSON's content.

    A full evaluation with the run's own settings (every sentence, its threshold, resolution and
    checkpoint, original text) also adds run_dir/per_sentence.<split>.csv.gz where the run lacks it (runs
    from before those files); it never replaces one, and a partial one (`max_samples`) never writes it."""
    from risbench.train.weights import read_target

    info = init_distributed()
    cfg, resolved, comp, used = load_run(run_dir, checkpoint, info, overrides)
    run_dir = read_target(run_dir, overrides)[0]
    threshold = cfg.eval.threshold if threshold is None else threshold
    resolution = resolution or cfg.eval.resolution
    if resolution not in ("original", "input"):
        raise RisbenchError(f"--resolution must be original or input, got '{resolution}'")
    splits = splits or list(cfg.eval.splits)
    sentences: dict[str, list[SentenceResult]] = {}
    result = {
        "splits": evaluate_splits(
            comp,
            cfg,
            info,
            splits,
            threshold=threshold,
            resolution=resolution,
            swap_text=swap_text,
            max_samples=max_samples,
            sentences=sentences,
        ),
        "provenance": {**_provenance(comp, cfg, resolved, info), "threshold": threshold, "resolution": resolution},
        "checkpoint": used,
    }
    if write and info.is_main:
        name = f"{'+'.join(splits)}_t{threshold:g}_{resolution}{'_swapped' if swap_text else ''}"
        if per_sentence:
            for split, items in sentences.items():
                atomic_write_text(run_dir / "evals" / f"{name}.{split}.csv", per_sentence_csv(items))
        own = (threshold, resolution, checkpoint) == (cfg.eval.threshold, cfg.eval.resolution, "auto")
        if own and max_samples is None and not swap_text:
            for split, items in sentences.items():
                if not per_sentence_path(run_dir, split).exists():
                    write_per_sentence(run_dir, split, items, threshold, resolution)
        atomic_write_json(run_dir / "evals" / f"{name}.json", result)
        result["written_to"] = str(run_dir / "evals" / f"{name}.json")
    return result
