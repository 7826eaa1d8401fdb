"""A pass-through FPN: the encoder's stage maps go to the decoder as they are (RefSegformer feeds its decoder
straight from the Swin stages and their VLTF outputs; the fusion happened inside the encoder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from risbench.errors import IncompatibleError
from risbench.models.interfaces import FPN, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec
from risbench.registry import FPNS


@dataclass
class StagesFPNConfig:
    """Options of the `stages` FPN (none: it has no parameters)."""


@FPNS.register("stages", config=StagesFPNConfig)
class StagesFPN(FPN):
    """No FPN on a multi-scale encoder: `pyramid` = the encoder's stage maps, finest first, at their own widths;
    `visual` = the coarsest of them; `text` = the encoder's last words at the text width. No parameters.

    It provides `pyramid` only, not `text_tokens`: its text is not at the map width, so decoders that read
    `FusedFeatures.text` at the FPN width cannot be combined with it (the build says so)."""

    requires = frozenset({"multi_scale"})
    tiny_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: StagesFPNConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        strides = tuple(in_spec.visual_strides)
        if list(strides) != sorted(strides):
            raise IncompatibleError(
                f"incompatible components: fpn 'stages' needs the encoder's stages finest first, got strides {strides}"
            )
        self.out_spec = FusedSpec(
            in_spec.visual_dims[-1], strides[-1], frozenset({"pyramid"}), tuple(in_spec.visual_dims), strides
        )

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        return FusedFeatures(feats.visual[-1], feats.text[-1], feats.text_pad_mask, None, list(feats.visual))
