"""`beit3_mdm`: BEiT-3's masked data modelling on image-text pairs, at small scale (`risbench pretrain`).

BEiT-3 (Wang et al. 2022, §2.2) pretrains one multiway transformer with one objective: masked data
modelling. For image-text pairs it masks 50% of the text tokens and predicts them from the image and the
remaining words; images alone get masked image modelling over 40% of the patches (block-wise, targets
from a VQ-KD tokenizer). Here (docs/decisions.md, "Pretraining"):
- text: `text_mask_ratio` of each expression's word tokens (at least one) become the tokenizer's
  `mask_id`; a linear head on the final joint sequence predicts them (cross-entropy over the masked
  positions only). On SynthRef the words are colours, shapes, sizes and positions, so predicting them
  means reading the referred object from the pixels.
- image (optional, `image_mask_ratio` > 0): uniformly random patches become `vision_embed.mask_token`
  and a linear head regresses their pixels (no visual tokenizer is available offline), per-patch
  normalised as MAE's target (`norm_target`, the default) or as the transform gives them, scaled by
  `image_loss_weight`.
The export is the official unilm layout: encoder keys under `beit3.`, the heads (`mlm_head.*`,
`mim_head.*`) beside them, so `encoder.weights=` loads it exactly as an official file and lists the heads
as ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.encoders.beit3 import Beit3Encoder
from risbench.models.encoders.beit3_checkpoint import PREFIX
from risbench.models.interfaces import PretrainObjective
from risbench.registry import OBJECTIVES

ENCODER_FILE = "encoder.pth"


@dataclass
class Beit3MdmConfig:
    """Options of BEiT-3 masked data modelling."""

    text_mask_ratio: float = 0.5  # share of each expression's word tokens that are masked (BEiT-3: 50%)
    image_mask_ratio: float = 0.0  # share of patches masked for pixel regression; 0 = text only
    image_loss_weight: float = 1.0
    # MAE's per-patch normalised pixels; false: the pixels as the transform gives them. On SynthRef the
    # normalisation turns a background patch (texture and +-6 grey levels of noise) into unit-variance
    # noise no model can predict, and removes the colour of an object's patch (docs/decisions.md §9)
    norm_target: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.text_mask_ratio <= 1.0:
            raise ValueError(f"text_mask_ratio must be in (0, 1], got {self.text_mask_ratio}")
        if not 0.0 <= self.image_mask_ratio < 1.0:
            raise ValueError(f"image_mask_ratio must be in [0, 1), got {self.image_mask_ratio}")


def choose_masked(candidates: Tensor, ratio: float) -> Tensor:
    """(B, N) bool: round(ratio * count) of each row's True positions (at least one where a row has any),
    chosen uniformly with torch's global generator."""
    scores = torch.rand(candidates.shape, device=candidates.device).masked_fill(~candidates, 2.0)
    count = candidates.sum(dim=1, keepdim=True)
    k = (count.float() * ratio).round().long().clamp(min=1).minimum(count)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return (rank < k) & candidates


def patchify(image: Tensor, patch: int) -> Tensor:
    """(B, 3, S, S) -> (B, n, 3 * patch * patch), patches in row-major order (the encoder's token order)."""
    b, c, h, w = image.shape
    x = image.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def blank_patches(image: Tensor, patch_mask: Tensor, patch: int) -> Tensor:
    """`image` with the pixels of the masked patches set to 0. The patch stem's tokens of those patches are
    replaced by the mask token anyway (so this changes nothing there); a convolutional stem's receptive field
    crosses patch borders, and without it the neighbours' tokens would see the pixels to be predicted."""
    b, _, h, w = image.shape
    grid = (~patch_mask).to(image.dtype).reshape(b, 1, h // patch, w // patch)
    return image * grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


@OBJECTIVES.register("beit3_mdm", config=Beit3MdmConfig)
class Beit3MaskedDataModelling(PretrainObjective):
    """BEiT-3 masked data modelling: masked words (and optionally patches) of image-text pairs."""

    requires = frozenset({"joint_tokens"})

    def __init__(self, cfg: Beit3MdmConfig, encoder: nn.Module, tokenizer) -> None:
        super().__init__()
        if not isinstance(encoder, Beit3Encoder):
            raise IncompatibleError(
                "incompatible components: objective 'beit3_mdm' pretrains a beit3 encoder, got "
                f"{type(encoder).__name__}"
            )
        if tokenizer.mask_id is None:
            raise RisbenchError(f"objective beit3_mdm: the tokenizer ({tokenizer.describe()}) has no mask id")
        self.cfg = cfg
        self.encoder = encoder
        self.mask_id = int(tokenizer.mask_id)
        self.special = (int(tokenizer.bos_id), int(tokenizer.eos_id))
        dim = encoder.embed_dim
        self.mlm_head = nn.Linear(dim, encoder.vocab_size)
        self.mim_head = nn.Linear(dim, 3 * encoder.patch_size**2) if cfg.image_mask_ratio > 0 else None
        for head in (self.mlm_head, self.mim_head):
            if head is not None:
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        image, ids, pad = batch["image"], batch["text_ids"], batch["text_pad_mask"]
        words = ~pad & (ids != self.special[0]) & (ids != self.special[1])
        masked = choose_masked(words, self.cfg.text_mask_ratio)
        patch_mask = None
        if self.mim_head is not None:
            n = self.encoder.num_vision_tokens - 1
            patch_mask = choose_masked(torch.ones(ids.shape[0], n, dtype=torch.bool), self.cfg.image_mask_ratio)
        seen = image if patch_mask is None else blank_patches(image, patch_mask, self.encoder.patch_size)
        seq = self.encoder.final_sequence(seen, ids.masked_fill(masked, self.mask_id), pad, patch_mask)
        split = self.encoder.num_vision_tokens
        logits = self.mlm_head(seq[:, split:][masked])
        target = ids[masked]
        text_loss = F.cross_entropy(logits.float(), target)
        logs = {"loss_mlm": float(text_loss.detach()), "acc_mlm": float((logits.argmax(-1) == target).float().mean())}
        loss = text_loss
        if self.mim_head is not None:
            pixels = patchify(image, self.encoder.patch_size)
            if self.cfg.norm_target:
                mean, var = pixels.mean(-1, keepdim=True), pixels.var(-1, keepdim=True)
                pixels = (pixels - mean) / (var + 1e-6).sqrt()
            pred = self.mim_head(seq[:, 1:split][patch_mask]).float()
            image_loss = F.mse_loss(pred, pixels[patch_mask])
            logs["loss_mim"] = float(image_loss.detach())
            loss = loss + self.cfg.image_loss_weight * image_loss
        return loss, logs

    def masked_word_logits(self, image: Tensor, ids: Tensor, pad: Tensor, masked: Tensor) -> Tensor:
        """(n_masked, vocab): the text head at the `masked` positions of `ids` (already masked), no patch
        masked (`risbench pretrain-probe`)."""
        seq = self.encoder.final_sequence(image, ids, pad, None)
        return self.mlm_head(seq[:, self.encoder.num_vision_tokens :][masked])

    def load_export(self, directory: str | Path) -> None:
        """Load what `export` wrote to `directory` (encoder and heads), strictly."""
        state = torch.load(Path(directory) / ENCODER_FILE, map_location="cpu", weights_only=True)["model"]
        encoder = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
        self.encoder.load_state_dict(encoder, strict=True)
        for name in ("mlm_head", "mim_head"):
            head = getattr(self, name)
            if head is not None:
                head.load_state_dict({k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")})

    def export(self) -> dict[str, object]:
        """{"encoder.pth": {"model": {"beit3.<key>": tensor, ..., "mlm_head.*": ...}}}: the official layout."""
        state = {PREFIX + k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        for name in ("mlm_head", "mim_head"):
            head = getattr(self, name)
            if head is not None:
                state.update({f"{name}.{k}": v.detach().cpu().clone() for k, v in head.state_dict().items()})
        return {ENCODER_FILE: {"model": state}}

    @staticmethod
    def encoder_options(directory: str | Path) -> dict[str, str]:
        """The encoder options that load an export in `directory`."""
        return {"weights": str(Path(directory) / ENCODER_FILE)}
