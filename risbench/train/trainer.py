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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from risbench.errors import RisbenchError
from risbench.train.checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from risbench.train.components import Components, build_split
from risbench.train.config import RunConfig
from risbench.train.distributed import DistInfo, GlobalBatchSampler, barrier, broadcast_object, wrap_ddp
from risbench.train.hooks import CheckpointHook, HookBase, LoggingHook, ProgressHook, ValidationHook
from risbench.train.losses import build_loss
from risbench.train.optim import LRSchedule, NonFiniteLoss, build_optimizer, optimization_step
from risbench.train.progress import Progress, truncate_log
from risbench.train.signals import StopRequest, TrainingInterrupted, stop_on_signals
from risbench.train.speed import compile_loss, compile_step_model, loader_options, prepare_model, sync_every_step

CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """What a checkpoint holds of the loop besides model, optimizer and schedule (resumes continue from it)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_seconds: float = 0.0
    best_score: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # validation results
    done: bool = False


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers (or the model itself)."""
    model = getattr(model, "_orig_mod", model)
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
    if tcfg.kind_weights:
        if not hasattr(train_ds, "set_kind_weights"):
            raise RisbenchError(f"train.kind_weights: the training split ({type(train_ds).__name__}) has no kinds")
        train_ds.set_kind_weights(tcfg.kind_weights)
    steps_per_epoch = len(train_ds) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise RisbenchError(
            f"train.batch_size {tcfg.batch_size} is larger than the training split ({len(train_ds)} samples)"
        )
    total_steps = tcfg.max_steps if tcfg.max_steps else tcfg.epochs * steps_per_epoch
    val_ds = None
    if cfg.eval.val_split:
        val_ds = build_split(comp, cfg.eval.val_split, train=False, seed=cfg.seed)

    loss_fn = compile_loss(build_loss(tcfg.loss.name, tcfg.loss.options), tcfg.speed)
    prepare_model(model, tcfg.speed)
    optimizer = build_optimizer(model, tcfg, info.device)
    schedule = LRSchedule(tcfg, total_steps, steps_per_epoch)
    state = TrainState()

    last = ckpt_dir / "last.pt"
    if resume and last.exists():
        ckpt = load_checkpoint(last, map_location=info.device)
        load_model_state(model, ckpt, last, resolved["model"])
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

    loop = TrainLoop(
        cfg=cfg,
        resolved=resolved,
        info=info,
        comp=comp,
        model=compile_step_model(wrap_ddp(model, tcfg, info), tcfg.speed),
        loss_fn=loss_fn,
        optimizer=optimizer,
        schedule=schedule,
        state=state,
        train_ds=train_ds,
        val_ds=val_ds,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        ckpt_dir=ckpt_dir,
        log_path=log_path,
    )
    hooks = [LoggingHook(), ProgressHook(quiet), ValidationHook(), CheckpointHook(interrupt_after)]
    return loop.run(hooks)


@dataclass
class TrainLoop:
    """The loop over optimizer steps; what happens around the steps is in its hooks (risbench.train.hooks).

    After each step the loop sets `lr`, `loss`, `terms`, `step_seconds`, `batch_epoch` (the epoch the batch
    came from), `last_step` and `epoch_end`, then calls every hook's `after_step` in order."""

    cfg: RunConfig
    resolved: dict[str, Any]
    info: DistInfo
    comp: Components
    model: nn.Module  # the DDP wrapper when distributed
    loss_fn: Callable[..., Any]
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    state: TrainState
    train_ds: Any
    val_ds: Any
    total_steps: int
    steps_per_epoch: int
    ckpt_dir: Path
    log_path: Path
    # per step, written by the loop and its hooks
    lr: float = 0.0
    loss: Any = None
    terms: dict[str, Any] = field(default_factory=dict)
    step_seconds: float = 0.0
    t_last: float = 0.0
    batch_epoch: int = 0
    last_step: bool = False
    epoch_end: bool = False
    record: dict[str, Any] | None = None
    validated: bool = False
    interrupted: bool = False
    progress: Progress | None = None

    @property
    def base(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return unwrap(self.model)

    def save(self, path: Path) -> None:
        """Checkpoint the loop (model, optimizer, schedule, state, RNG, config) to `path` on rank 0."""
        if self.info.is_main:
            save_checkpoint(
                path,
                {
                    "version": CHECKPOINT_VERSION,
                    "model": self.base.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(),
                    "state": self.state.__dict__,
                    "rng": rng_state(),
                    "config": self.resolved,
                },
            )
        barrier(self.info)

    def write_log(self, entry: dict[str, Any]) -> None:
        """Append one JSON line to train_log.jsonl (rank 0)."""
        if self.info.is_main:
            with self.log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def run(self, hooks: list[HookBase]) -> TrainState:
        """Run the steps left, with `hooks`; returns the state (`done` False when a hook interrupted)."""
        for hook in hooks:
            hook.loop = self
        self.model.train()
        with stop_on_signals() as stop:
            try:
                for hook in hooks:
                    hook.before_train()
                while True:
                    for batch in self._epoch_loader():
                        self._step(batch)
                        for hook in hooks:
                            hook.after_step()
                        self._stop_on_signal(stop)
                        if self.last_step or self.interrupted:
                            return self.state
                        if self.epoch_end:
                            break
                    else:  # the loader yielded nothing: cannot happen with steps_per_epoch >= 1
                        raise RuntimeError(f"empty epoch {self.state.epoch} at step {self.state.step}")
            finally:
                for hook in hooks:
                    hook.after_train()

    def _stop_on_signal(self, stop: StopRequest) -> None:
        """After a step: on Ctrl-C / SIGTERM (rank 0's, on every rank), save last.pt and stop."""
        name = broadcast_object(stop.signal_name, self.info) if self.info.world_size > 1 else stop.signal_name
        if name is not None:
            last = self.ckpt_dir / "last.pt"
            self.save(last)
            raise TrainingInterrupted(name, self.state.step, last)

    def _epoch_loader(self) -> torch.utils.data.DataLoader:
        """The rest of the current epoch: its data order depends only on (seed, epoch)."""
        cfg, state, info = self.cfg, self.state, self.info
        self.batch_epoch = state.epoch
        if hasattr(self.train_ds, "set_epoch"):
            self.train_ds.set_epoch(state.epoch)
        sampler = GlobalBatchSampler(
            len(self.train_ds),
            cfg.train.batch_size,
            rank=info.rank,
            world_size=info.world_size,
            seed=cfg.seed,
            epoch=state.epoch,
            start_batch=state.batch_in_epoch,
        )
        gen = torch.Generator()
        gen.manual_seed(cfg.seed * 1000 + state.epoch)
        loader = torch.utils.data.DataLoader(
            self.train_ds,
            batch_sampler=sampler,
            num_workers=cfg.train.num_workers,
            collate_fn=self.comp.collator,
            generator=gen,
            **loader_options(cfg.train.speed, info.device, cfg.train.num_workers),
        )
        self.t_last = time.perf_counter()
        return loader

    def _step(self, batch: dict[str, Any]) -> None:
        """One optimizer step, then the step counters, the clock and whether this was the last step."""
        tcfg, state = self.cfg.train, self.state
        budget = tcfg.max_minutes * 60.0 if tcfg.max_minutes else None
        self.lr = self.schedule.apply(self.optimizer, state.step, state.train_seconds / budget if budget else 0.0)
        try:
            self.loss, self.terms = optimization_step(
                self.model,
                self.base.decoder,
                self.loss_fn,
                self.optimizer,
                batch,
                self.info.device,
                amp=tcfg.amp,
                clip_grad=tcfg.clip_grad,
                negative_weight=tcfg.loss.negative_weight,
                existence_weight=tcfg.loss.existence_weight,
                check_finite=sync_every_step(tcfg.speed, self.info.device),
                drop_unpadded_mask=tcfg.speed.drop_unpadded_mask,
            )
        except NonFiniteLoss as exc:
            raise RisbenchError(f"loss is {exc.value} at step {state.step + 1}; lower train.lr?") from None
        state.step += 1
        state.batch_in_epoch += 1
        now = time.perf_counter()
        self.step_seconds = now - self.t_last
        state.train_seconds += self.step_seconds
        self.t_last = now

        last_step = state.step >= self.total_steps or (budget is not None and state.train_seconds >= budget)
        if state.batch_in_epoch >= self.steps_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
            if not tcfg.max_steps and state.epoch >= tcfg.epochs:
                last_step = True
        if budget is not None:  # all ranks must agree on stopping at a time budget
            last_step = bool(broadcast_object(last_step, self.info))
        self.last_step = last_step
        self.epoch_end = state.batch_in_epoch == 0
        if last_step:
            state.done = True
