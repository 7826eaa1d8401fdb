"""The robust (R-RIS) parts of the training loss, around the run's registered loss: negatives' weight in the
mask loss and the existence head's BCE (docs/decisions.md, "Existence head for any model").

- `mask_loss_terms`: the registered loss (a mean over samples of per-sample terms, as every built-in one is)
  with negative sentences (batch["exists"] False, target empty) weighted by `negative_weight` relative to
  positives: each term is (n_pos * L(positives) + w * n_neg * L(negatives)) / n, which at w = 1 equals the
  loss of the whole batch; at w = 1 the loss is computed on the whole batch, exactly as without the option.
- `existence_term`: existence_weight * BCE-with-logits(exist_logits, exists), the mean over the batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def select_batch(batch: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The samples of `batch` where `keep` (B,) bool is True: tensors with a batch dimension and lists are
    indexed, anything else is kept."""
    idx = keep.nonzero().flatten().tolist()
    size = keep.shape[0]
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.ndim and value.shape[0] == size:
            out[key] = value[keep.to(value.device)]
        elif isinstance(value, list) and len(value) == size:
            out[key] = [value[i] for i in idx]
        else:
            out[key] = value
    return out


def mask_loss_terms(
    loss_fn: nn.Module, logits: Tensor, target: Tensor, batch: dict[str, Any], negative_weight: float = 1.0
) -> dict[str, Tensor]:
    """The registered loss's weighted terms, negatives weighted by `negative_weight` (see the module doc)."""
    if negative_weight == 1.0 or "exists" not in batch:
        return dict(loss_fn(logits, target, batch))
    exists = batch["exists"].to(logits.device).bool()
    n = exists.numel()
    terms: dict[str, Tensor] = {}
    for keep, weight in ((exists, 1.0), (~exists, negative_weight)):
        count = int(keep.sum())
        if count == 0:
            continue
        part = loss_fn(logits[keep], target[keep], select_batch(batch, keep))
        for name, value in part.items():
            scaled = value * (weight * count / n)
            terms[name] = terms[name] + scaled if name in terms else scaled
    return terms


def existence_term(exist_logits: Tensor, exists: Tensor, weight: float) -> Tensor:
    """weight * BCE(exist_logits, exists) over the batch (exists: (B,) bool, True = the object is there)."""
    target = exists.to(device=exist_logits.device, dtype=torch.float32)
    return weight * F.binary_cross_entropy_with_logits(exist_logits.float(), target)
