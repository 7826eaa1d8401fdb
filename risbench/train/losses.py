"""Segmentation losses (the LOSSES registry). A loss maps (logits, target, batch) to named, already
weighted terms; the trainer sums them with the decoder's `extra_losses` terms.

`bce_dice` is the Shared-RIS loss L = 2.0 BCE + 0.5 Dice (seed000 §III-D); `focal_dice` RISAM's,
L = 0.5 focal (gamma 2) + 0.5 Dice (seed003 Eq. 12), with the same resolution and Dice conventions.
Decisions for what the papers leave open (docs/decisions.md §5 FLAG and "RISAM"):
  - resolution: the loss is taken at the logits' resolution (S/4), with the ground truth resized to it
    by nearest-neighbour interpolation (CRIS-style; `resize_target`). Cheaper than upsampling logits.
  - BCE: mean over all pixels of the batch, computed from logits (`binary_cross_entropy_with_logits`,
    numerically the BCE of sigmoid probabilities).
  - Dice: on sigmoid probabilities, per sample, 1 - (2 sum(p t) + eps) / (sum p + sum t + eps) with
    eps = 1 (smoothing), then the mean over samples. Per-sample means keep the DDP average of the
    per-process losses equal to the loss of the global batch. A negative sample (empty target) gets
    Dice = 1 - 1 / (sum p + 1), which pushes its whole mask towards zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.registry import LOSSES


def resize_target(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, S, S) or (B, 1, S, S) {0,1} mask -> (B, 1, h, w) float, nearest-neighbour."""
    if mask.ndim == 3:
        mask = mask[:, None]
    mask = mask.float()
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=size, mode="nearest")
    return mask


def dice_loss(prob: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Per-sample soft Dice loss, averaged over the batch. prob, target: (B, ...)."""
    p = prob.flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1.0 - (2.0 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


@dataclass
class BceDiceConfig:
    """Options of the bce_dice loss."""

    bce_weight: float = 2.0
    dice_weight: float = 0.5
    dice_eps: float = 1.0


@LOSSES.register("bce_dice", config=BceDiceConfig)
class BceDiceLoss(nn.Module):
    """Shared-RIS loss: bce_weight * BCE + dice_weight * Dice at the logits' resolution (2.0 / 0.5)."""

    def __init__(self, cfg: BceDiceConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or BceDiceConfig()

    def forward(self, logits: Tensor, target: Tensor, batch: dict | None = None) -> dict[str, Tensor]:
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        dice = dice_loss(torch.sigmoid(logits), target, self.cfg.dice_eps)
        return {"bce": self.cfg.bce_weight * bce, "dice": self.cfg.dice_weight * dice}


@dataclass
class BceConfig:
    """Options of the bce loss."""

    weight: float = 1.0


@LOSSES.register("bce", config=BceConfig)
class BceLoss(nn.Module):
    """Pixel-wise binary cross-entropy only (mean over pixels), at the logits' resolution."""

    def __init__(self, cfg: BceConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or BceConfig()

    def forward(self, logits: Tensor, target: Tensor, batch: dict | None = None) -> dict[str, Tensor]:
        return {"bce": self.cfg.weight * F.binary_cross_entropy_with_logits(logits.float(), target)}


@dataclass
class FocalDiceConfig:
    """Options of the focal_dice loss (RISAM, seed003 Eq. 12: 0.5 focal + 0.5 Dice, gamma 2)."""

    focal_weight: float = 0.5
    dice_weight: float = 0.5
    gamma: float = 2.0
    alpha: float | None = None  # class balance of the focal loss; None = none (the paper gives none)
    dice_eps: float = 1.0


def sigmoid_focal_loss(logits: Tensor, target: Tensor, gamma: float, alpha: float | None) -> Tensor:
    """Binary focal loss, mean over pixels: -(1 - p_t)^gamma log p_t, p_t = p on the target, 1 - p off it
    (Eq. 10 is the positive-class half); `alpha` weights positives by alpha and negatives by 1 - alpha."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


@LOSSES.register("focal_dice", config=FocalDiceConfig)
class FocalDiceLoss(nn.Module):
    """RISAM loss: focal_weight * focal (gamma 2, no alpha) + dice_weight * Dice at the logits' resolution."""

    def __init__(self, cfg: FocalDiceConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FocalDiceConfig()

    def forward(self, logits: Tensor, target: Tensor, batch: dict | None = None) -> dict[str, Tensor]:
        logits = logits.float()
        focal = sigmoid_focal_loss(logits, target, self.cfg.gamma, self.cfg.alpha)
        dice = dice_loss(torch.sigmoid(logits), target, self.cfg.dice_eps)
        return {"focal": self.cfg.focal_weight * focal, "dice": self.cfg.dice_weight * dice}


def build_loss(name: str, options: dict | None = None) -> nn.Module:
    """The registered loss `name` built with its options (validated against its config dataclass)."""
    cfg = LOSSES.make_config(name, dict(options or {}), "train.loss")
    return LOSSES.get(name).obj(cfg)


# losses with a file of their own register on import (the LOSSES registry loads this module)
from risbench.train import losses_refsegformer  # noqa: E402, F401
