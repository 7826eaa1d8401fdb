"""Optimizer and learning-rate schedule of the recipe: AdamW with decoupled weight decay on weights only (or
Adam, L2 decay), linear warmup then cosine (or linear / poly / constant) decay to `min_lr`, driven by training
progress, or `step`: x `gamma` at each epoch of `milestones` (MultiStepLR stepped per epoch, as DETRIS/CRIS).

Progress is `step / total_steps`. With a wall-clock budget (`train.max_minutes`) progress is the larger
of that and `elapsed / budget`, so the schedule reaches `min_lr` when the time runs out (a time-budgeted
run is reproducible in its metrics only up to timing; step-budgeted runs are exactly reproducible).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from risbench.models.interfaces import unpadded_text
from risbench.train.config import TrainConfig
from risbench.train.losses import resize_target
from risbench.train.precision import autocast_context
from risbench.train.robust_loss import existence_term, mask_loss_terms
from risbench.train.speed import use_fused


def lr_mult_of(name: str, lr_mult: dict[str, float]) -> float:
    """The lr multiplier of parameter `name` (a DDP `module.` prefix ignored): the longest `lr_mult` key that
    is the name or a dotted prefix of it, else 1."""
    name = name.removeprefix("module.")
    best, mult = -1, 1.0
    for prefix, value in lr_mult.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, mult = len(prefix), float(value)
    return mult


def param_groups(
    model: nn.Module, weight_decay: float, skip: set[str] | None = None, lr_mult: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """AdamW groups: weights with decay; biases, norm/1-d parameters and `skip` names without; each split
    again by its `lr_mult` (module prefix -> multiplier of the schedule's lr, kept as the group's `lr_mult`)."""
    skip = skip or set()
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip
        groups.setdefault((no_decay, lr_mult_of(name, lr_mult or {})), []).append(p)
    order = sorted(groups, key=lambda k: (k[0], -k[1]))
    return [{"params": groups[k], "weight_decay": 0.0 if k[0] else weight_decay, "lr_mult": k[1]} for k in order]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """AdamW (or Adam) over `param_groups`; the model's `no_weight_decay()` names are excluded from decay.
    With `device`, `cfg.speed.fused_adamw` (auto: on CUDA) picks torch's fused kernel."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    cls = torch.optim.Adam if getattr(cfg, "optimizer", "adamw") == "adam" else torch.optim.AdamW
    extra = {}
    speed = getattr(cfg, "speed", None)
    if device is not None and speed is not None and use_fused(speed, device):
        extra["fused"] = True
    groups = param_groups(model, cfg.weight_decay, skip, getattr(cfg, "lr_mult", None))
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **extra)


class LRSchedule:
    """lr(step, progress): linear warmup over `warmup_steps`, then the named decay to `min_lr`."""

    def __init__(self, cfg: TrainConfig, total_steps: int, steps_per_epoch: int | None = None) -> None:
        self.base_lr = cfg.lr
        self.milestones = list(getattr(cfg, "milestones", []) or [])
        self.gamma = float(getattr(cfg, "gamma", 0.1))
        self.steps_per_epoch = max(1, steps_per_epoch or total_steps)
        self.min_lr = cfg.min_lr
        self.warmup_steps = cfg.warmup_steps
        self.schedule = cfg.schedule
        self.total_steps = max(1, total_steps)
        self.last_lr = cfg.lr if cfg.warmup_steps == 0 else 0.0

    def lr_at(self, step: int, time_progress: float = 0.0) -> float:
        """Learning rate for optimizer step `step` (0-based). `time_progress` in [0, 1] (time budget)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.schedule == "step":  # the epoch of this step; milestones passed so far
            epoch = step // self.steps_per_epoch
            return self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        span = max(1, self.total_steps - self.warmup_steps)
        t = max((step - self.warmup_steps) / span, time_progress)
        t = min(max(t, 0.0), 1.0)
        if self.schedule == "constant":
            factor = 1.0
        elif self.schedule == "linear":
            factor = 1.0 - t
        elif self.schedule == "poly":
            factor = (1.0 - t) ** 0.9
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * t))
        return self.min_lr + (self.base_lr - self.min_lr) * factor

    def apply(self, optimizer: torch.optim.Optimizer, step: int, time_progress: float = 0.0) -> float:
        lr = self.lr_at(step, time_progress)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        self.last_lr = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "last_lr": self.last_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_steps = state["total_steps"]
        self.last_lr = state["last_lr"]


class NonFiniteLoss(ArithmeticError):
    """The loss of a step was inf or NaN (the caller knows the step and says what to change)."""

    def __init__(self, value: float) -> None:
        super().__init__(f"loss is {value}")
        self.value = value


def _no_mark(phase: str) -> None:
    return None


def optimization_step(
    model: nn.Module,
    decoder: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    device: torch.device,
    *,
    amp: str,
    clip_grad: float | None,
    negative_weight: float = 1.0,
    existence_weight: float = 1.0,
    check_finite: bool = True,
    drop_unpadded_mask: bool = False,
    mark: Callable[[str], None] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One step of the recipe on `batch` (image, text_ids, text_pad_mask, mask, exists): forward under the
    run's autocast, the loss (negatives weighted by `negative_weight`) plus the decoder's auxiliary terms at
    the logits' resolution (the target resized on the device), plus `existence_weight` x the existence BCE
    ("exist") when the model has an existence head, backward, gradient clipping, optimizer step. Returns the
    loss and its terms.

    `check_finite`: a non-finite loss raises before the update (a host sync; off, the caller checks later).
    `drop_unpadded_mask`: when the batch's padding mask is on the host and pads nothing, attention runs
    without a mask (`unpadded_text`). `mark(phase)` is called after 'data' (tensors on the device),
    'forward' (the loss), 'backward' and 'optimizer' (clipping and the update), for `risbench bench`."""
    mark = mark or _no_mark
    host_pad = batch["text_pad_mask"]
    unpadded = drop_unpadded_mask and host_pad.device.type == "cpu" and not bool(host_pad.any())
    image = batch["image"].to(device, non_blocking=True)
    ids = batch["text_ids"].to(device, non_blocking=True)
    pad = host_pad.to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    mark("data")
    with autocast_context(device, amp), unpadded_text(unpadded):
        out = model(image, ids, pad)
    logits = out.logits.float()
    target = resize_target(mask, tuple(logits.shape[-2:]))
    terms = mask_loss_terms(loss_fn, logits, target, batch, negative_weight)
    terms.update(decoder.extra_losses(out, target, batch))
    if out.exist_logits is not None:
        terms["exist"] = existence_term(out.exist_logits, batch["exists"], existence_weight)
    loss = sum(terms.values())
    if check_finite and not torch.isfinite(loss):
        raise NonFiniteLoss(float(loss.item()))
    mark("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mark("backward")
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    mark("optimizer")
    return loss, terms
