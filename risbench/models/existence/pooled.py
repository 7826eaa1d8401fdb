"""A generic existence head for any model: pooled fused features and text -> MLP -> one logit
(docs/decisions.md, "Existence head for any model").

Inputs (all at the FPN's width D): the fused visual map pooled twice, as a plain mean over the grid and as
a mean weighted by the model's own predicted mask (sigmoid of the decoder's logits resized to the grid: the
features where the model would segment); the words' mean over non-padded positions; and, when the FPN hands
on a sentence vector (trait "sentence"), that vector projected to D. LayerNorm over the concatenation, then
Linear -> GELU -> Linear(1). With `detach` (default) the head reads detached inputs, as RefSegformer's does,
so that its loss trains the head only and the mask path keeps its own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.models.interfaces import (
    DecoderOutput,
    EncoderFeatures,
    ExistenceHead,
    FeatureSpec,
    FusedFeatures,
    FusedSpec,
)
from risbench.registry import EXISTENCE_HEADS


@dataclass
class PooledExistenceConfig:
    """Options of the pooled existence head."""

    hidden_dim: int | None = None  # MLP width; null = the FPN's width
    use_sentence: bool = True  # read the sentence vector when the FPN hands one on
    mask_pool: bool = True  # also pool the visual map under the predicted mask
    detach: bool = True  # the head's loss does not reach the encoder, FPN or decoder
    threshold: float = 0.5  # evaluation: sigmoid(logit) < threshold forces an empty mask (R-RIS code)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] (0: never force an empty mask), got {self.threshold}")


def masked_mean(tokens: Tensor, pad_mask: Tensor) -> Tensor:
    """(B, L, D) mean over the positions where `pad_mask` (B, L) is False (zeros for an all-padded row)."""
    keep = (~pad_mask).to(tokens.dtype)[..., None]
    return (tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0)


@EXISTENCE_HEADS.register("pooled", config=PooledExistenceConfig)
class PooledExistenceHead(ExistenceHead):
    """Generic: mean- and mask-pooled fused map, words' masked mean (and sentence), LayerNorm + MLP -> logit."""

    tiny_options = {"hidden_dim": 16}
    requires = frozenset({"text_tokens"})

    def __init__(
        self,
        cfg: PooledExistenceConfig,
        fused_spec: FusedSpec,
        encoder_spec: FeatureSpec,
        aux_dims: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        dim = fused_spec.dim
        self.sentence_proj = (
            nn.Linear(fused_spec.sentence_dim, dim)
            if cfg.use_sentence and "sentence" in fused_spec.traits and fused_spec.sentence_dim
            else None
        )
        width = dim * (2 + cfg.mask_pool + (self.sentence_proj is not None))
        hidden = cfg.hidden_dim or dim
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures, out: DecoderOutput) -> Tensor:
        visual, text = fused.visual, fused.text
        logits = out.logits
        if self.cfg.detach:
            visual, text, logits = visual.detach(), text.detach(), logits.detach()
        parts = [visual.mean(dim=(2, 3)), masked_mean(text, fused.text_pad_mask)]
        if self.cfg.mask_pool:
            grid = F.interpolate(logits.float(), size=visual.shape[-2:], mode="bilinear", align_corners=False)
            weight = torch.sigmoid(grid).to(visual.dtype)
            parts.append((visual * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(1e-6))
        if self.sentence_proj is not None:
            sentence = fused.sentence.detach() if self.cfg.detach else fused.sentence
            parts.append(self.sentence_proj(sentence.to(visual.dtype)))
        return self.mlp(self.norm(torch.cat(parts, dim=1)))[:, 0]
