"""`dual_contrastive`: CLIP's image-text contrastive pretraining of the `dual` encoder's two towers, at small
scale (`risbench pretrain`).

CLIP (Radford et al. 2021, Fig. 3 and §2.5) trains an image encoder and a text encoder from scratch so that
the matching (image, text) pairs of a batch score higher than every mismatched pair: both are L2-normalised
after a linear projection into a joint space, the B x B cosine similarities are scaled by exp(t) (t a
learned log inverse temperature, initialised at log(1 / 0.07), the scale clipped at 100) and the loss is
the mean of the cross-entropies over the rows (image -> text) and the columns (text -> image): symmetric
InfoNCE. Here (docs/decisions.md §20):
- the image vector is the vision tower's `pooled(image)` (DINOv2: the CLS of the final normed output)
  through `visual_projection` (CLIP's `visual.proj`, (D_vision, D_joint), init std D_vision^-0.5);
- the text vector is the text tower's sentence vector (CLIP: the projected <|endoftext|> state), so the
  text projection is the tower's own and the joint width is the text tower's `sentence_dim`;
- the towers run apart (no adapter, no text context in the vision tower): the only cross-modal signal is
  the loss. On SynthRef captions (`data.text: captions`) a caption names every object of its image, so a
  batch is told apart by reading colours, shapes, sizes from the pixels.
The export is each tower in its official layout, loaded by the towers' own options: `vision.pth` (e.g. the
official dinov2 keys, `encoder.vision.weights=`) and `text.pth` (e.g. OpenAI's CLIP text keys,
`encoder.text.clip_state_dict=`); the contrastive heads (`visual_projection`, `logit_scale`) go to
`contrastive_heads.pth`, which fine-tuning does not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.encoders.dual import DualEncoder
from risbench.models.encoders.pair_losses import symmetric_info_nce
from risbench.models.interfaces import PretrainObjective
from risbench.registry import OBJECTIVES

VISION_FILE = "vision.pth"
TEXT_FILE = "text.pth"
HEADS_FILE = "contrastive_heads.pth"
# the tower options that load the files above: a tower this objective pretrains must have them
VISION_OPTION = "weights"
TEXT_OPTION = "clip_state_dict"


@dataclass
class DualContrastiveConfig:
    """Options of CLIP's contrastive pretraining."""

    init_temperature: float = 0.07  # CLIP: logit_scale initialised at log(1 / 0.07)
    max_logit_scale: float = 100.0  # CLIP clips exp(logit_scale) at 100

    def __post_init__(self) -> None:
        if not 0.0 < self.init_temperature <= 1.0:
            raise ValueError(f"init_temperature must be in (0, 1], got {self.init_temperature}")
        if self.max_logit_scale < 1.0 / self.init_temperature:
            raise ValueError(f"max_logit_scale must be >= 1 / init_temperature, got {self.max_logit_scale}")


@OBJECTIVES.register("dual_contrastive", config=DualContrastiveConfig)
class DualContrastive(PretrainObjective):
    """CLIP's symmetric InfoNCE between a dual encoder's pooled image vector and its sentence vector."""

    requires = frozenset({"sentence"})

    def __init__(self, cfg: DualContrastiveConfig, encoder: nn.Module, tokenizer) -> None:
        super().__init__()
        if not isinstance(encoder, DualEncoder):
            raise IncompatibleError(
                "incompatible components: objective 'dual_contrastive' pretrains a dual encoder, got "
                f"{type(encoder).__name__}"
            )
        vision, text = encoder.vision, encoder.text
        for where, tower, needs, option in (
            ("vision", vision, ("pooled", "official_state_dict"), VISION_OPTION),
            ("text", text, ("official_state_dict",), TEXT_OPTION),
        ):
            missing = [m for m in needs if not callable(getattr(tower, m, None))]
            if missing or not hasattr(tower.cfg, option):
                raise IncompatibleError(
                    f"incompatible components: objective 'dual_contrastive' needs a {where} tower with "
                    f"{', '.join(needs)} and a '{option}' option; {type(tower).__name__} lacks "
                    f"{', '.join(missing) or option}"
                )
            if len(tower.adapters):
                raise RisbenchError(
                    f"objective dual_contrastive: the {where} tower has adapters; pretrain the towers alone "
                    f"(set model.encoder.{where}.adapters: [])"
                )
        frozen = [n for n, p in encoder.named_parameters() if not p.requires_grad]
        if frozen:
            raise RisbenchError(
                f"objective dual_contrastive: {len(frozen)} encoder parameters are frozen (e.g. {frozen[0]}); "
                "set model.encoder.freeze: []"
            )
        self.cfg = cfg
        self.encoder = encoder
        width = vision.pooled_dim
        self.visual_projection = nn.Parameter(torch.randn(width, text.sentence_dim) * width**-0.5)  # CLIP's init
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        _, sentence = self.encoder.text(batch["text_ids"], batch["text_pad_mask"])
        image = self.encoder.vision.pooled(batch["image"]) @ self.visual_projection
        scale = self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)
        loss, logits = symmetric_info_nce(image, sentence, scale)
        labels = torch.arange(logits.shape[0], device=logits.device)
        logs = {
            "loss_clip": float(loss.detach()),
            "acc_i2t": float((logits.argmax(1) == labels).float().mean()),  # image -> its caption, of B
            "acc_t2i": float((logits.argmax(0) == labels).float().mean()),
            "acc_chance": 1.0 / logits.shape[0],
            "logit_scale": float(scale.detach()),
        }
        return loss, logs

    def export(self) -> dict[str, object]:
        """{vision.pth: {"model": the vision tower's official keys}, text.pth: the text tower's official keys,
        contrastive_heads.pth: {visual_projection, logit_scale}}."""
        heads = {"visual_projection": self.visual_projection, "logit_scale": self.logit_scale}
        return {
            VISION_FILE: {"model": self.encoder.vision.official_state_dict()},
            TEXT_FILE: self.encoder.text.official_state_dict(),
            HEADS_FILE: {k: v.detach().cpu().clone() for k, v in heads.items()},
        }

    @staticmethod
    def encoder_options(directory: str | Path) -> dict[str, str]:
        """The encoder options (dotted, under model.encoder) that load an export in `directory`."""
        d = Path(directory)
        return {f"vision.{VISION_OPTION}": str(d / VISION_FILE), f"text.{TEXT_OPTION}": str(d / TEXT_FILE)}
