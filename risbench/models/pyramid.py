"""A ViTDet-style simple feature pyramid: multi-scale maps from single-scale (plain ViT) features.

Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection" (ViTDet), as detectron2's
`SimpleFeaturePyramid` builds it: per level, resample one input map by a power-of-two factor
(x2^k: k transposed 2x2 convs of stride 2, halving the channels each time, with LayerNorm + GELU between
them; x1: identity; x1/2^k: k max-pools of 2x2), then a 1x1 conv to the level's output width and a 3x3
conv, each followed by a channel LayerNorm (bias-free convs, as detectron2 does when a norm follows).

Used by methods that need a pyramid on a single-scale encoder (the CRIS FPN with `pyramid: true`, the
CGFormer and DMMI decoders). A library module, not a registered component. Two extensions over ViTDet:
each level may take its own input map ("from selected layers"), and `out_convs: false` drops the
1x1 + 3x3 convs, leaving only the resampling (output widths then follow from the input: C / 2^k after
k deconvolutions, C otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import IncompatibleError


@dataclass
class PyramidConfig:
    """Options of a simple feature pyramid that a component builds for itself.

    dims: output channels per level, finest first (ignored when `out_convs` is false);
    out_convs: ViTDet's 1x1 + 3x3 convs after the resampling; norm: "ln" (ViTDet), "bn" or "none".
    """

    dims: tuple[int, ...] = (128, 256, 512, 1024)
    out_convs: bool = True
    norm: str = "ln"


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (through `F.layer_norm`, so fvcore counts it)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "ln":
        return LayerNorm2d(dim)
    if kind == "bn":
        return nn.BatchNorm2d(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"pyramid norm must be 'ln', 'bn' or 'none', got {kind!r}")


def scale_exponent(scale: float) -> int:
    """log2 of a power-of-two scale factor (4 -> 2, 0.5 -> -1); anything else raises."""
    k = math.log2(scale) if scale > 0 else float("nan")
    if not math.isfinite(k) or abs(k - round(k)) > 1e-9:
        raise IncompatibleError(f"simple feature pyramid: scale {scale} is not a power of two")
    return int(round(k))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid, one level per scale factor (e.g. (4, 2, 1, 0.5) -> strides /4..x2).

    in_dims: one width for all levels (one shared input map) or one per level (a map per level).
    forward(x) takes one map or a list with one map per level and returns the levels in `scales` order.
    """

    def __init__(
        self,
        in_dims: int | Sequence[int],
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        out_dims: int | Sequence[int] | None = 256,
        out_convs: bool = True,
        norm: str = "ln",
    ) -> None:
        super().__init__()
        n = len(scales)
        in_dims = [in_dims] * n if isinstance(in_dims, int) else list(in_dims)
        if len(in_dims) != n:
            raise ValueError(f"simple feature pyramid: {len(in_dims)} input widths for {n} scales")
        self.scales = tuple(float(s) for s in scales)
        self.levels = nn.ModuleList()
        dims: list[int] = []
        if out_convs:
            out_dims = [out_dims] * n if isinstance(out_dims, int) else list(out_dims or [])
            if len(out_dims) != n:
                raise ValueError(f"simple feature pyramid: {len(out_dims)} output widths for {n} scales")
        for i, (cin, scale) in enumerate(zip(in_dims, self.scales, strict=True)):
            k = scale_exponent(scale)
            layers: list[nn.Module] = []
            c = cin
            for j in range(k):  # upsample: transposed convs, halving the width each time
                if c % 2:
                    raise ValueError(f"simple feature pyramid: width {c} cannot be halved for scale {scale}")
                if j > 0:
                    layers += [_norm("ln" if norm == "none" else norm, c), nn.GELU()]
                layers.append(nn.ConvTranspose2d(c, c // 2, 2, stride=2))
                c //= 2
            layers += [nn.MaxPool2d(2, 2) for _ in range(-k)]
            if out_convs:
                cout = out_dims[i]
                bias = norm == "none"
                layers += [nn.Conv2d(c, cout, 1, bias=bias), _norm(norm, cout)]
                layers += [nn.Conv2d(cout, cout, 3, padding=1, bias=bias), _norm(norm, cout)]
                c = cout
            self.levels.append(nn.Sequential(*layers))
            dims.append(c)
        self.out_dims: tuple[int, ...] = tuple(dims)

    def out_strides(self, in_strides: int | Sequence[int]) -> tuple[int, ...]:
        """Strides of the outputs given the input stride(s)."""
        s = [in_strides] * len(self.scales) if isinstance(in_strides, int) else list(in_strides)
        return tuple(int(round(si / sc)) for si, sc in zip(s, self.scales, strict=True))

    def forward(self, x: Tensor | Sequence[Tensor]) -> list[Tensor]:
        xs = [x] * len(self.levels) if isinstance(x, Tensor) else list(x)
        if len(xs) != len(self.levels):
            raise ValueError(f"simple feature pyramid: {len(xs)} inputs for {len(self.levels)} levels")
        return [level(xi) for level, xi in zip(self.levels, xs, strict=True)]


def pyramid_scales(in_strides: Sequence[int], target_strides: Sequence[int]) -> tuple[float, ...]:
    """Scale factors that take maps at `in_strides` to `target_strides` (each a power of two)."""
    scales = tuple(s / t for s, t in zip(in_strides, target_strides, strict=True))
    for s in scales:
        scale_exponent(s)
    return scales


def match_size(x: Tensor, size: Sequence[int], align_corners: bool = True) -> Tensor:
    """Bilinear resize of x to `size` when it differs (a no-op otherwise)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


PYRAMID_STRIDES = (4, 8, 16, 32)  # what CGFormer and DMMI take from a Swin-B: c1..c4 at 1/4 .. 1/32


class DecoderPyramid(nn.Module):
    """The 4-level pyramid (strides 4/8/16/32, finest first) that the CGFormer and DMMI decoders consume.

    - The FPN provides one (`pyramid` trait, e.g. a LAVT-style FPN over Swin): used as it is.
    - `source="fpn"`: every level from the FPN's single fused map, by a simple feature pyramid (ViTDet
      builds all levels from the last ViT layer the same way).
    - `source="encoder"`: the finest `len(encoder_stages)` levels from those encoder stages' visual maps
      (the "high-resolution features from the visual encoder" of Shared-RIS §IV-C), the rest from the
      FPN's map.
    """

    def __init__(
        self,
        owner: str,
        source: str,
        encoder_stages: Sequence[int],
        cfg: PyramidConfig,
        in_spec,
        enc_spec,
        target_strides: Sequence[int] = PYRAMID_STRIDES,
    ) -> None:
        super().__init__()
        self.target_strides = tuple(target_strides)
        n = len(self.target_strides)
        self.sfp: SimpleFeaturePyramid | None = None
        self.from_encoder: tuple[int, ...] = ()
        if "pyramid" in in_spec.traits:
            if tuple(in_spec.pyramid_strides) != self.target_strides:
                raise IncompatibleError(
                    f"incompatible components: decoder '{owner}' needs a pyramid at strides {self.target_strides}, "
                    f"but the fpn provides strides {tuple(in_spec.pyramid_strides)}"
                )
            self.dims = tuple(in_spec.pyramid_dims)
            return
        if source == "fpn":
            in_dims, in_strides = [in_spec.dim] * n, [in_spec.stride] * n
        elif source == "encoder":
            stages = tuple(encoder_stages)
            num = len(enc_spec.visual_dims)
            if not stages or len(stages) > n or any(not -num <= s < num for s in stages):
                raise IncompatibleError(
                    f"incompatible components: decoder '{owner}' pyramid_encoder_stages {stages} must name 1..{n} "
                    f"of the encoder's {num} stages"
                )
            self.from_encoder = tuple(s % num for s in stages)
            rest = n - len(stages)
            in_dims = [enc_spec.visual_dims[s] for s in self.from_encoder] + [in_spec.dim] * rest
            in_strides = [enc_spec.visual_strides[s] for s in self.from_encoder] + [in_spec.stride] * rest
        else:
            raise IncompatibleError(f"decoder '{owner}': pyramid_source must be 'fpn' or 'encoder', got {source!r}")
        try:
            scales = pyramid_scales(in_strides, self.target_strides)
        except IncompatibleError as exc:
            raise IncompatibleError(
                f"incompatible components: decoder '{owner}' cannot build strides {self.target_strides} from "
                f"input strides {tuple(in_strides)} ({exc})"
            ) from None
        self.sfp = SimpleFeaturePyramid(in_dims, scales, cfg.dims, cfg.out_convs, cfg.norm)
        self.dims = self.sfp.out_dims

    def forward(self, fused, feats) -> list[Tensor]:
        """Pyramid levels, finest first."""
        if self.sfp is None:
            return list(fused.pyramid)
        n = len(self.target_strides)
        inputs = [feats.visual[s] for s in self.from_encoder]
        inputs += [fused.visual] * (n - len(inputs))
        return self.sfp(inputs)
