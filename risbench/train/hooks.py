"""The hooks of the training loop (detectron2's HookBase): logging, progress, validation, checkpointing.

The loop (`risbench.train.trainer.TrainLoop`) calls each hook in order before the first step, after every
optimizer step and after the last one; a hook reads and writes the loop's attributes.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from risbench.errors import RisbenchError
from risbench.train.distributed import all_reduce_mean
from risbench.train.evaluate import evaluate_dataset
from risbench.train.progress import Progress, use_quiet
from risbench.train.speed import sync_every_step

if TYPE_CHECKING:
    from risbench.train.trainer import TrainLoop


class HookBase:
    """A part of the training loop that runs at fixed points; `loop` is set when the loop takes the hook."""

    loop: TrainLoop

    def before_train(self) -> None:
        """Before the first step (also when resuming)."""

    def after_step(self) -> None:
        """After each optimizer step (the loop's `last_step` / `epoch_end` are set)."""

    def after_train(self) -> None:
        """After the last step, an interruption, or an error."""


class LoggingHook(HookBase):
    """Every `train.log_every` steps (and at the last): mean losses, LR and throughput to train_log.jsonl.
    Sets `loop.record` to the line written, or None.

    The window's losses are summed on the device (in float64: the same sums as Python floats of the
    per-step values), so a step does not wait for its loss to reach the host. When the step itself does not
    check that the loss is finite (`train.speed.host_sync: log`), the window's sum is checked here, at every
    log line and before any checkpoint (a NaN or inf in any step of the window makes the sum non-finite)."""

    def __init__(self) -> None:
        self.window: dict[str, Any] = {}
        self.steps, self.seconds = 0, 0.0

    def after_step(self) -> None:
        loop = self.loop
        state, tcfg = loop.state, loop.cfg.train
        self.seconds += loop.step_seconds
        self.steps += 1
        self._add("loss", loop.loss)
        for k, v in loop.terms.items():
            self._add(f"loss_{k}", v)
        loop.record = None
        log_now = state.step % max(1, tcfg.log_every) == 0 or loop.last_step
        if not sync_every_step(tcfg.speed, loop.info.device) and (log_now or self._saves_now()):
            total = float(self.window["loss"])
            if not math.isfinite(total):
                first = state.step - self.steps + 1
                raise RisbenchError(f"loss is {total} in steps {first}-{state.step}; lower train.lr?")
        if log_now:
            window = {k: float(v) for k, v in self.window.items()}
            means = all_reduce_mean({k: v / self.steps for k, v in window.items()}, loop.info)
            record: dict[str, Any] = {
                "step": state.step,
                "epoch": loop.batch_epoch,
                **{k: round(v, 6) for k, v in means.items()},
                "lr": loop.lr,
                "samples_per_s": round(tcfg.batch_size * self.steps / max(self.seconds, 1e-9), 3),
                "s_per_step": round(self.seconds / self.steps, 4),
                "train_seconds": round(state.train_seconds, 3),
            }
            loop.write_log(record)
            loop.record = record
            self.window, self.steps, self.seconds = {}, 0, 0.0

    def _add(self, key: str, value: Any) -> None:
        value = value.detach().double()
        self.window[key] = value if key not in self.window else self.window[key] + value

    def _saves_now(self) -> bool:
        """Whether a hook may write a checkpoint after this step (validation, epoch end, ckpt_every)."""
        loop, tcfg = self.loop, self.loop.cfg.train
        step = loop.state.step
        every = [e for e in (tcfg.ckpt_every, tcfg.val_every) if e]
        return loop.epoch_end or any(step % e == 0 for e in every)


class ProgressHook(HookBase):
    """The progress bar or plain log lines (rank 0): `loop.progress`, updated after each step."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def before_train(self) -> None:
        loop = self.loop
        loop.progress = Progress(loop.total_steps, loop.info.is_main, use_quiet(self.quiet))
        loop.progress.update(loop.state.step, None)

    def after_step(self) -> None:
        self.loop.progress.update(self.loop.state.step, self.loop.record)

    def after_train(self) -> None:
        self.loop.progress.close()


class ValidationHook(HookBase):
    """Validation on `eval.val_split` every `train.val_every` steps (else at each epoch end) and at the last
    step: a train_log.jsonl line, and checkpoints/best.pt when oIoU improves. Sets `loop.validated`."""

    def after_step(self) -> None:
        loop = self.loop
        tcfg = loop.cfg.train
        loop.validated = loop.val_ds is not None and bool(
            (tcfg.val_every and loop.state.step % tcfg.val_every == 0)
            or (not tcfg.val_every and loop.epoch_end)
            or loop.last_step
        )
        if loop.validated:
            self.validate()
            loop.t_last = time.perf_counter()  # validation time is not training time

    def validate(self) -> None:
        """Evaluate on the validation split, log it, and keep the best checkpoint."""
        loop = self.loop
        cfg, state = loop.cfg, loop.state
        metrics, _ = evaluate_dataset(
            loop.base,
            loop.val_ds,
            loop.comp.collator,
            loop.info,
            threshold=cfg.eval.threshold,
            resolution=cfg.eval.resolution,
            batch_size=cfg.eval.batch_size,
            amp=cfg.train.amp,
            max_samples=cfg.train.val_max_samples,
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
        loop.write_log(entry)
        loop.progress.message(
            f"val {cfg.eval.val_split} step {state.step}: oIoU {metrics['oIoU']:.2f} mIoU {metrics['mIoU']:.2f}"
        )
        if state.best_score is None or metrics["oIoU"] > state.best_score:
            state.best_score = metrics["oIoU"]
            state.best_step = state.step
            loop.save(loop.ckpt_dir / "best.pt")


class CheckpointHook(HookBase):
    """checkpoints/last.pt after a validation, at the last step and every `train.ckpt_every` steps; with
    `interrupt_after` (tests: a simulated preemption), saves and stops the loop once that many steps are done."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.interrupt_after = interrupt_after

    def after_step(self) -> None:
        loop = self.loop
        step, every = loop.state.step, loop.cfg.train.ckpt_every
        last = loop.ckpt_dir / "last.pt"
        if loop.validated or loop.last_step or (every and step % every == 0):
            loop.save(last)
        if not loop.last_step and self.interrupt_after is not None and step >= self.interrupt_after:
            loop.save(last)
            loop.interrupted = True
