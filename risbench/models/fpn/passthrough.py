"""No neck: the encoder's stages go to the decoder as they are (for encoders that fuse inside their vision tower,
`encoder.stage_fusion`; risbench/models/stage_fusion/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from risbench.models.interfaces import (
    FPN,
    EncoderFeatures,
    FeatureSpec,
    FusedFeatures,
    FusedSpec,
    map_to_tokens,
    tokens_to_map,
)
from risbench.registry import FPNS


@dataclass
class PassthroughConfig:
    """Options of the `passthrough` FPN."""

    dim: int | None = None  # width of `visual` and `text`; null = the encoder's text width
    # false: no projections (no parameters): `visual` and `text` at their own widths, `dim` = the coarsest map's,
    # and the trait text_tokens only where the words have that width too (RefSegformer: released keys only)
    project: bool = True

    def __post_init__(self) -> None:
        if not self.project and self.dim is not None:
            raise ValueError(f"dim {self.dim} needs project: true (project: false hands the maps on at their widths)")


@FPNS.register("passthrough", config=PassthroughConfig)
class PassthroughFPN(FPN):
    """No fusion here: `pyramid` = the encoder's maps at their own widths, finest first (multi-scale encoders,
    trait `pyramid`); `visual` = the coarsest map and `text` = the last stage's words, each through a Linear to
    `dim` only where its width differs. Made for encoders whose `stage_fusion` already fused language into every
    stage (LAVT / DMMI / RefSegformer inside Swin): the decoder reads those fused stages and (DMMI) the words the
    encoder updated. On a multi-scale encoder a decoder reads either `pyramid` or `visual`, so the other's
    projection (when there is one) gets no gradient. `project: false` builds neither projection, for decoders that
    read only the pyramid (and the encoder's memory): the text is then handed on at its own width and the trait
    `text_tokens` is given only when that is the coarsest map's width, so a text-reading component is refused."""

    tiny_options: ClassVar[dict[str, Any]] = {}
    requires = frozenset({"text_tokens"})

    def __init__(self, cfg: PassthroughConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        last = in_spec.visual_dims[-1]
        dim = (cfg.dim or in_spec.text_dim) if cfg.project else last
        self.multi_scale = len(set(in_spec.visual_strides)) > 1
        self.visual_proj = nn.Linear(last, dim) if last != dim else nn.Identity()
        self.text_proj = nn.Linear(in_spec.text_dim, dim) if in_spec.text_dim != dim and cfg.project else nn.Identity()
        text = frozenset({"text_tokens"}) if cfg.project or in_spec.text_dim == dim else frozenset()
        if self.multi_scale:
            order = sorted(range(len(in_spec.visual_strides)), key=lambda i: (in_spec.visual_strides[i], i))
            self.order = order
            self.out_spec = FusedSpec(
                dim,
                in_spec.visual_strides[-1],
                text | {"pyramid"},
                tuple(in_spec.visual_dims[i] for i in order),
                tuple(in_spec.visual_strides[i] for i in order),
            )
        else:
            self.out_spec = FusedSpec(dim, in_spec.visual_strides[-1], text)

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        last = feats.visual[-1]
        visual = tokens_to_map(self.visual_proj(map_to_tokens(last)), tuple(last.shape[-2:]))
        text = self.text_proj(feats.text[-1])
        pyramid = [feats.visual[i] for i in self.order] if self.multi_scale else None
        return FusedFeatures(visual, text, feats.text_pad_mask, None, pyramid)
