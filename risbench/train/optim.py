"""Optimizer and learning-rate schedule of the recipe: AdamW with decoupled weight decay on weights only,
linear warmup then cosine (or linear / poly / constant) decay to `min_lr`, driven by training progress.

Progress is `step / total_steps`. With a wall-clock budget (`train.max_minutes`) progress is the larger
of that and `elapsed / budget`, so the schedule reaches `min_lr` when the time runs out (a time-budgeted
run is reproducible in its metrics only up to timing; step-budgeted runs are exactly reproducible).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from risbench.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, skip: set[str] | None = None) -> list[dict[str, Any]]:
    """Two AdamW groups: weights with decay; biases, norm/1-d parameters and `skip` names without."""
    skip = skip or set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups`; the model's `no_weight_decay()` names are excluded from decay."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, skip), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )


class LRSchedule:
    """lr(step, progress): linear warmup over `warmup_steps`, then the named decay to `min_lr`."""

    def __init__(self, cfg: TrainConfig, total_steps: int) -> None:
        self.base_lr = cfg.lr
        self.min_lr = cfg.min_lr
        self.warmup_steps = cfg.warmup_steps
        self.schedule = cfg.schedule
        self.total_steps = max(1, total_steps)
        self.last_lr = cfg.lr if cfg.warmup_steps == 0 else 0.0

    def lr_at(self, step: int, time_progress: float = 0.0) -> float:
        """Learning rate for optimizer step `step` (0-based). `time_progress` in [0, 1] (time budget)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
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
            group["lr"] = lr
        self.last_lr = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "last_lr": self.last_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_steps = state["total_steps"]
        self.last_lr = state["last_lr"]
