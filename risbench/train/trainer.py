"""The training loop: one run of one resolved config, resumable and deterministic.

Steps are optimizer steps over GLOBAL batches. The run ends after `train.max_steps` steps when that is
set (epochs then run as long as needed), else after `train.epochs` epochs, or when the wall-clock
budget `train.max_minutes` of training time (validation excluded) is spent, whichever comes first.

Determinism (CPU): the config's seed seeds python/numpy/torch; the data order of an epoch depends only on
(seed, epoch) (`GlobalBatchSampler`) and a dataset's per-item choices only on (seed, epoch, index);
DataLoaders get their own generator so they do not consume the global torch RNG;
`torch.use_deterministic_algorithms` is on. A checkpoint holds the model, optimizer, schedule, every RNG
state and the step; a run resumed from it replays the remaining steps exactly, so its final weights and
metrics equal an uninterrupted run's. (A run limited by `max_minutes` stops at a time-dependent step.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from risbench.errors import RisbenchError
from risbench.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from risbench.train.components import Components, build_split
from risbench.train.config import RunConfig
from risbench.train.distributed import DistInfo, GlobalBatchSampler, all_reduce_mean, barrier, broadcast_object
from risbench.train.evaluate import evaluate_dataset
from risbench.train.losses import build_loss
from risbench.train.optim import LRSchedule, NonFiniteLoss, build_optimizer, optimization_step
from risbench.train.progress import Progress, truncate_log, use_quiet

CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_seconds: float = 0.0
    best_score: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # validation results
    done: bool = False


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train(
    cfg: RunConfig,
    resolved: dict[str, Any],
    run_dir: Path,
    info: DistInfo,
    comp: Components,
    *,
    quiet: bool = False,
    resume: bool = True,
    interrupt_after: int | None = None,
) -> TrainState:
    """Train (or continue training) to the end of the recipe. Returns the final state; `state.done` is
    False when stopped early by `interrupt_after` (steps; simulates a preemption, for tests)."""
    tcfg = cfg.train
    ckpt_dir = run_dir / "checkpoints"
    log_path = run_dir / "train_log.jsonl"
    if tcfg.batch_size % info.world_size:
        raise RisbenchError(
            f"train.batch_size {tcfg.batch_size} (global) is not divisible by the world size {info.world_size}"
        )
    model = comp.model
    train_ds = build_split(comp, "train", train=True, seed=cfg.seed)
    steps_per_epoch = len(train_ds) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise RisbenchError(
            f"train.batch_size {tcfg.batch_size} is larger than the training split ({len(train_ds)} samples)"
        )
    total_steps = tcfg.max_steps if tcfg.max_steps else tcfg.epochs * steps_per_epoch
    val_ds = None
    if cfg.eval.val_split:
        val_ds = build_split(comp, cfg.eval.val_split, train=False, seed=cfg.seed)

    loss_fn = build_loss(tcfg.loss.name, tcfg.loss.options)
    optimizer = build_optimizer(model, tcfg)
    schedule = LRSchedule(tcfg, total_steps)
    state = TrainState()

    last = ckpt_dir / "last.pt"
    if resume and last.exists():
        ckpt = load_checkpoint(last, map_location=info.device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        if info.is_main:
            truncate_log(log_path, state.step)
    elif info.is_main and log_path.exists():
        log_path.unlink()
    if state.done or state.step >= total_steps:
        state.done = True
        return state

    sync_bn = tcfg.sync_bn if tcfg.sync_bn is not None else (info.enabled and info.device.type == "cuda")
    if sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = (
        nn.parallel.DistributedDataParallel(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=tcfg.find_unused_parameters,
            # static graph: tolerates parameters that never get a gradient (BEiT-3's MIM mask_token)
            # without the per-step search of find_unused_parameters
            static_graph=not tcfg.find_unused_parameters,
        )
        if info.enabled
        else model
    )
    base = unwrap(ddp)
    decoder = base.decoder
    ddp.train()

    def save(path: Path) -> None:
        if info.is_main:
            save_checkpoint(
                path,
                {
                    "version": CHECKPOINT_VERSION,
                    "model": base.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "state": state.__dict__,
                    "rng": rng_state(),
                    "config": resolved,
                },
            )
        barrier(info)

    def validate() -> None:
        metrics, _ = evaluate_dataset(
            base,
            val_ds,
            comp.collator,
            info,
            threshold=cfg.eval.threshold,
            resolution=cfg.eval.resolution,
            batch_size=cfg.eval.batch_size,
            amp=tcfg.amp,
            max_samples=tcfg.val_max_samples,
        )
        entry = {
            "step": state.step,
            "epoch": state.epoch,
            "train_seconds": round(state.train_seconds, 3),
            "val": {
                "split": cfg.eval.val_split,
                "threshold": cfg.eval.threshold,
                "resolution": cfg.eval.resolution,
                "num_sentences": metrics["num_sentences"],
                "oIoU": metrics["oIoU"],
                "mIoU": metrics["mIoU"],
            },
        }
        state.history.append(entry)
        if info.is_main:
            with log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
        progress.message(
            f"val {cfg.eval.val_split} step {state.step}: oIoU {metrics['oIoU']:.2f} mIoU {metrics['mIoU']:.2f}"
        )
        if state.best_score is None or metrics["oIoU"] > state.best_score:
            state.best_score = metrics["oIoU"]
            state.best_step = state.step
            save(ckpt_dir / "best.pt")

    progress = Progress(total_steps, info.is_main, use_quiet(quiet))
    progress.update(state.step, None)
    budget = tcfg.max_minutes * 60.0 if tcfg.max_minutes else None
    window: dict[str, float] = {}
    window_steps, window_time = 0, 0.0
    stop = False
    try:
        while not stop:
            epoch = state.epoch
            if hasattr(train_ds, "set_epoch"):
                train_ds.set_epoch(epoch)
            sampler = GlobalBatchSampler(
                len(train_ds),
                tcfg.batch_size,
                rank=info.rank,
                world_size=info.world_size,
                seed=cfg.seed,
                epoch=epoch,
                start_batch=state.batch_in_epoch,
            )
            gen = torch.Generator()
            gen.manual_seed(cfg.seed * 1000 + epoch)
            loader = torch.utils.data.DataLoader(
                train_ds,
                batch_sampler=sampler,
                num_workers=tcfg.num_workers,
                collate_fn=comp.collator,
                generator=gen,
                pin_memory=info.device.type == "cuda",
            )
            t_last = time.perf_counter()
            for batch in loader:
                lr = schedule.apply(optimizer, state.step, state.train_seconds / budget if budget else 0.0)
                try:
                    loss, terms = optimization_step(
                        ddp, decoder, loss_fn, optimizer, batch, info.device, amp=tcfg.amp, clip_grad=tcfg.clip_grad
                    )
                except NonFiniteLoss as exc:
                    raise RisbenchError(f"loss is {exc.value} at step {state.step + 1}; lower train.lr?") from None

                state.step += 1
                state.batch_in_epoch += 1
                now = time.perf_counter()
                state.train_seconds += now - t_last
                window_time += now - t_last
                t_last = now
                window_steps += 1
                window["loss"] = window.get("loss", 0.0) + float(loss.detach())
                for k, v in terms.items():
                    window[f"loss_{k}"] = window.get(f"loss_{k}", 0.0) + float(v.detach())

                last_step = state.step >= total_steps or (budget is not None and state.train_seconds >= budget)
                if state.batch_in_epoch >= steps_per_epoch:
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    if not tcfg.max_steps and state.epoch >= tcfg.epochs:
                        last_step = True
                if budget is not None:  # all ranks must agree on stopping at a time budget
                    last_step = bool(broadcast_object(last_step, info))
                if state.step % max(1, tcfg.log_every) == 0 or last_step:
                    means = all_reduce_mean({k: v / window_steps for k, v in window.items()}, info)
                    record = {
                        "step": state.step,
                        "epoch": epoch,
                        **{k: round(v, 6) for k, v in means.items()},
                        "lr": lr,
                        "samples_per_s": round(tcfg.batch_size * window_steps / max(window_time, 1e-9), 3),
                        "s_per_step": round(window_time / window_steps, 4),
                        "train_seconds": round(state.train_seconds, 3),
                    }
                    if info.is_main:
                        with log_path.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                    progress.update(state.step, record)
                    window, window_steps, window_time = {}, 0, 0.0
                else:
                    progress.update(state.step, None)

                epoch_end = state.batch_in_epoch == 0
                do_val = val_ds is not None and (
                    (tcfg.val_every and state.step % tcfg.val_every == 0)
                    or (not tcfg.val_every and epoch_end)
                    or last_step
                )
                if last_step:
                    state.done = True
                if do_val:
                    validate()
                    t_last = time.perf_counter()
                if do_val or last_step or (tcfg.ckpt_every and state.step % tcfg.ckpt_every == 0):
                    save(last)
                if last_step:
                    stop = True
                    break
                if interrupt_after is not None and state.step >= interrupt_after:
                    save(last)
                    return state
                if epoch_end:
                    break
            else:  # the loader yielded nothing: cannot happen with steps_per_epoch >= 1
                raise RuntimeError(f"empty epoch {state.epoch} at step {state.step}")
    finally:
        progress.close()
    return state
