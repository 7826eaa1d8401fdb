"""RefSegformer's official loss (jianzongwu/robust-ref-seg@e7c7da6f, utils/util.py::loss_with_exist), registered
as `refsegformer_ce` in LOSSES (imported by risbench.train.losses). docs/decisions.md §18 RefSegformer decoders.

  L = CE(pos) + 0.4 CE(neg)                         the finest mask: this loss
    + sum over aux masks 0.4 (CE(pos) + 0.4 CE(neg)) the decoder's `extra_losses` (refsegformer_xattn, --use_mask)
    + 1.0 BCE(exist_pred, exist)                      the existence head (`exist_logits`, when given)

CE(pos) is the pixel mean over the positive sentences of the batch, CE(neg) over the negative ones (a group
absent from the batch adds 0), on logits upsampled bilinearly (align_corners=True) to the input mask, as the
released model upsamples every mask to the input size before the loss. The 2-class CE is computed as BCE on the
one logit fg - bg the decoders return, which is the same value and gradient (refsegformer_common).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from risbench.models.decoders.refsegformer_common import exists_of, full_mask, negative_weighted_ce
from risbench.registry import LOSSES


@dataclass
class RefSegformerLossConfig:
    """Options of the refsegformer_ce loss (args.py's defaults)."""

    neg_weight: float = 0.4  # args.neg_loss_weight
    exist_weight: float = 1.0  # args.exist_loss_weight, applied to `exist_logits` when the caller passes them
    full_resolution: bool = True  # CE at the input mask's size (released); false: at the logits' size


@LOSSES.register("refsegformer_ce", config=RefSegformerLossConfig)
class RefSegformerLoss(nn.Module):
    """RefSegformer's mask loss: CE(positives) + 0.4 CE(negatives) at the input resolution (+ the existence BCE)."""

    def __init__(self, cfg: RefSegformerLossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or RefSegformerLossConfig()

    def forward(
        self, logits: Tensor, target: Tensor, batch: dict | None = None, exist_logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Terms {'ce'} (+ {'exist_bce'} when `exist_logits` (B,) are given: BCE against batch['exists'],
        weighted by exist_weight; a trainer whose existence head adds its own BCE term leaves them out)."""
        mask = full_mask(target, batch, self.cfg.full_resolution, logits.device)
        exists = exists_of(batch, logits.shape[0], logits.device)
        terms = {"ce": negative_weighted_ce(logits, mask, exists, self.cfg.neg_weight)}
        if exist_logits is not None:
            bce = F.binary_cross_entropy_with_logits(exist_logits.float().reshape(-1), exists.float())
            terms["exist_bce"] = self.cfg.exist_weight * bce
        return terms
