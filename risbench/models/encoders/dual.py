"""A dual encoder: one vision tower + one text tower (risbench.models.towers), with freeze rules.

`encoder: {name: dual, vision: {name: dinov2_reg, ...}, text: {name: clip_text, ...}, freeze: [...], train: [...]}`.
The text tower runs first; its words are the context that the vision tower's adapters may read (DETRIS).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from risbench.data.transforms import RESIZE_MODES
from risbench.errors import RisbenchError
from risbench.models.interfaces import Encoder, EncoderFeatures, FeatureSpec
from risbench.registry import ENCODERS, TEXT_TOWERS, VISION_TOWERS

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class DualConfig:
    """Options of the dual encoder."""

    vision: dict[str, Any] = field(default_factory=lambda: {"name": "dinov2_reg"})
    text: dict[str, Any] = field(default_factory=lambda: {"name": "clip_text"})
    # parameter-name globs (relative to the encoder: vision.*, text.*, vision.adapters.*); a parameter is
    # frozen when it matches a `freeze` glob and no `train` glob (DETRIS: freeze the towers, train adapters)
    freeze: tuple[str, ...] = ()
    train: tuple[str, ...] = ()
    pixel_mean: tuple[float, float, float] = CLIP_MEAN  # DETRIS normalises with CLIP's mean/std
    pixel_std: tuple[float, float, float] = CLIP_STD
    # stretch | letterbox (DETRIS: the long side to the input, centred) | pad (SAM, RISAM: the long side to the
    # input, zero padding bottom/right); risbench.data.transforms
    resize: str = "stretch"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got '{self.resize}'")


def _tower(registry, section: dict[str, Any], where: str, **kwargs: Any):
    if not isinstance(section, dict) or "name" not in section:
        raise RisbenchError(f"{where}: expected a mapping with a 'name'")
    name = section["name"]
    cfg = registry.make_config(name, {k: v for k, v in section.items() if k != "name"}, where)
    return registry.get(name).obj(cfg, **kwargs)


@ENCODERS.register("dual", config=DualConfig)
class DualEncoder(Encoder):
    """Vision tower + text tower -> EncoderFeatures: the vision tower's maps, the text tower's words (the same
    tensor for every stage), its sentence vector (trait `sentence`), no visual CLS.

    Towers and adapters are components of their own registries; what trains is decided by the `freeze` /
    `train` globs only. Frozen parameters keep requires_grad False; the towers stay in the caller's mode
    (DETRIS does not switch its frozen towers to eval; they hold no dropout or BN, their adapters do).
    """

    tokenizer_family = "clip_bpe"
    pixel_mean = CLIP_MEAN
    pixel_std = CLIP_STD
    tiny_options: ClassVar[dict[str, Any]] = {
        "vision": {
            "name": "dinov2_reg",
            "size": "tiny-test",
            "image_size": 56,
            "out_layers": (0, 1),
            "adapters": [{"name": "dense_aligner", "layers": (1,), "dim": 16, "cross_dim": 16, "cross_heads": 2}],
        },
        "text": {
            "name": "clip_text",
            "size": "tiny-test",
            "vocab_size": 100,
            "context_length": 20,
            "adapters": [{"name": "text_adapter", "layers": (1,), "dim": 16}],
        },
        "freeze": ("vision.*", "text.*"),
        "train": ("*.adapters.*",),
    }

    def __init__(self, cfg: DualConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text = _tower(TEXT_TOWERS, cfg.text, "encoder.text")
        self.vision = _tower(VISION_TOWERS, cfg.vision, "encoder.vision", context_dim=self.text.dim)
        self.tokenizer_family = type(self.text).tokenizer_family
        self.pixel_mean, self.pixel_std = tuple(cfg.pixel_mean), tuple(cfg.pixel_std)
        self.input_resize = cfg.resize
        self.image_size = self.vision.image_size
        self.vocab_size = self.text.vocab_size
        self.max_text_len = self.text.max_text_len
        self.out_spec = FeatureSpec(
            visual_dims=self.vision.out_dims,
            visual_strides=self.vision.out_strides,
            text_dim=self.text.dim,
            traits=self.vision.traits | {"text_tokens", "sentence"},
            sentence_dim=self.text.sentence_dim,
        )
        self.weights = f"vision={self.vision.weights},text={self.text.weights}"
        if self.weights == "vision=random,text=random":
            self.weights = "random"
        self._apply_freeze()

    def _apply_freeze(self) -> None:
        frozen = 0
        for name, p in self.named_parameters():
            freeze = any(fnmatch.fnmatchcase(name, g) for g in self.cfg.freeze)
            if freeze and not any(fnmatch.fnmatchcase(name, g) for g in self.cfg.train):
                p.requires_grad_(False)
                frozen += p.numel()
        logger.info("dual: %d parameters frozen by %s (except %s)", frozen, self.cfg.freeze, self.cfg.train)

    def flop_parts(self) -> dict[str, str]:
        """Sub-modules reported on their own by `risbench flops` (a nested one is left out of its parent)."""
        parts = {
            "vision tower": "vision",
            "vision adapters": "vision.adapters",
            "text tower": "text",
            "text adapters": "text.adapters",
        }
        modules = dict(self.named_modules())
        # a tower without adapters (SAM's ViT) or with none configured gets no adapters row
        return {
            label: path
            for label, path in parts.items()
            if path in modules and any(True for _ in modules[path].parameters())
        }

    def forward(self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor) -> EncoderFeatures:
        words, sentence = self.text(text_ids, text_pad_mask)
        visual = self.vision(image, words, text_pad_mask)
        return EncoderFeatures(
            visual=visual, text=[words] * len(visual), text_pad_mask=text_pad_mask, visual_cls=None, sentence=sentence
        )
