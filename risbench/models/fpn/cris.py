"""The CRIS FPN ("CLIP-driven" multi-modal FPN; DerrickWang005/CRIS.pytorch, model/layers.py::FPN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import IncompatibleError
from risbench.models.interfaces import FPN, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec
from risbench.models.layers import conv_bn_relu
from risbench.models.pyramid import SimpleFeaturePyramid
from risbench.registry import FPNS


def linear_bn_relu(din: int, dout: int) -> nn.Sequential:
    """Linear (no bias) -> BN1d -> ReLU (CRIS's `linear_layer`)."""
    return nn.Sequential(nn.Linear(din, dout, bias=False), nn.BatchNorm1d(dout), nn.ReLU(inplace=True))


class CoordConv(nn.Module):
    """Concatenate x/y coordinate channels in [-1, 1], then Conv3x3 -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(cin + 2, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x, grid_y])[None].expand(b, -1, -1, -1)
        return self.conv(torch.cat([x, coords], dim=1))


@dataclass
class CrisFPNConfig:
    """Options of the CRIS FPN."""

    out_channels: tuple[int, int, int] = (256, 512, 1024)  # CRIS's [256, 512, 1024]; output width = [1]
    pyramid: bool = False  # single-scale encoder: build strides x/2, x, 2x with a simple feature pyramid
    pyramid_dims: tuple[int, int, int] = (256, 512, 1024)  # widths of those pyramid levels (pyramid: true)


@FPNS.register("cris", config=CrisFPNConfig)
class CrisFPN(FPN):
    """CRIS FPN: sentence-gated coarsest map, top-down concat fusion, 3-way aggregation, CoordConv.

    Follows CRIS's FPN (docs/decisions.md §2 CRIS) on the LAST THREE stages the encoder returns (v3, v4, v5):
    f5 = BN-ReLU(conv1x1(v5) * s), s = Linear-BN-ReLU(sentence state); f4 = conv1x1(concat(conv3x3(v4),
    up(f5))); f3 = conv1x1(concat(pool(conv3x3(v3)), f4)); fq = conv1x1(concat(conv3x3 of f3, f4, up(f5)))
    -> CoordConv3x3 -> conv3x3. All convs are bias-free Conv-BN-ReLU; no residual (DETRIS adds one).
    The output grid is v4's.

    Decisions / FLAG readings:
    - Sentence state = the text CLS token, index 0 of the last stage's text tokens (BEiT-3's <s>,
      BERT's [CLS]); CRIS used CLIP's projected EOT feature.
    - Grids: CRIS takes strides 8/16/32 (x2 bilinear upsample of f5/fq5, 2x2 average pool of f3). With a
      multi-scale encoder (Swin stages 2-4) that is what we do. On a single-scale ViT all three maps share
      one grid: `pyramid: false` (default) drops the upsample and the pool (23.0M params, ~20 GMACs at
      480 px for BEiT-3-B against the paper's 23M / 19G); `pyramid: true` first builds strides 8/16/32
      from the three stages with a ViTDet simple feature pyramid (scales 2, 1, 0.5, widths
      `pyramid_dims`), which adds its parameters and FLOPs.
    - CRIS's FPN outputs only visual features. Our output's text tokens are the encoder's last-stage
      text tokens through one Linear to the output width (a decision; the paper does not say how the
      Shared decoder gets its text when this FPN is used); `visual_cls` is None.
    """

    tiny_options: ClassVar[dict[str, Any]] = {"out_channels": (8, 16, 32), "pyramid_dims": (8, 16, 24)}

    requires = frozenset()

    def __init__(self, cfg: CrisFPNConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        if len(in_spec.visual_dims) < 3:
            raise IncompatibleError(
                f"incompatible components: fpn 'cris' needs at least 3 encoder stages, but the encoder returns "
                f"{len(in_spec.visual_dims)} (set encoder.out_indices to 3 or more layers)"
            )
        c3, c4, c5 = cfg.out_channels
        in_dims = tuple(in_spec.visual_dims[-3:])
        strides = tuple(in_spec.visual_strides[-3:])
        self.cfg = cfg
        self.sfp: SimpleFeaturePyramid | None = None
        if cfg.pyramid:
            if len(set(strides)) != 1:
                raise IncompatibleError(
                    f"incompatible components: fpn 'cris' with pyramid: true needs a single-scale encoder, but "
                    f"its last three stages have strides {strides}; use pyramid: false"
                )
            self.sfp = SimpleFeaturePyramid(in_dims, (2.0, 1.0, 0.5), cfg.pyramid_dims)
            in_dims = self.sfp.out_dims
            strides = self.sfp.out_strides(strides[0])
        self.up5 = _ratio(strides[2], strides[1], "v5", "v4", strides)
        self.pool3 = _ratio(strides[1], strides[0], "v4", "v3", strides)
        # fusion 1: sentence gating of the coarsest map
        self.txt_proj = linear_bn_relu(in_spec.text_dim, c5)
        self.f1_v_proj = conv_bn_relu(in_dims[2], c5, 1)
        self.norm_layer = nn.Sequential(nn.BatchNorm2d(c5), nn.ReLU(inplace=True))
        # fusion 2 and 3: top-down concatenation
        self.f2_v_proj = conv_bn_relu(in_dims[1], c4, 3)
        self.f2_cat = conv_bn_relu(c5 + c4, c4, 1)
        self.f3_v_proj = conv_bn_relu(in_dims[0], c3, 3)
        self.f3_cat = conv_bn_relu(c3 + c4, c4, 1)
        # aggregation
        self.f4_proj5 = conv_bn_relu(c5, c4, 3)
        self.f4_proj4 = conv_bn_relu(c4, c4, 3)
        self.f4_proj3 = conv_bn_relu(c4, c4, 3)
        self.aggr = conv_bn_relu(3 * c4, c4, 1)
        self.coordconv = nn.Sequential(CoordConv(c4, c4), conv_bn_relu(c4, c4, 3))
        # text tokens for the decoder (not part of CRIS; see the class docstring)
        self.text_out = nn.Linear(in_spec.text_dim, c4)
        self.out_spec = FusedSpec(c4, strides[1], frozenset({"text_tokens"}))

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        v3, v4, v5 = feats.visual[-3:]
        if self.sfp is not None:
            v3, v4, v5 = self.sfp([v3, v4, v5])
        text = feats.text[-1]
        state = self.txt_proj(text[:, 0])[:, :, None, None]
        f5 = self.norm_layer(self.f1_v_proj(v5) * state)
        f4 = self.f2_v_proj(v4)
        f4 = self.f2_cat(torch.cat([f4, self._up(f5)], dim=1))
        f3 = self._pool(self.f3_v_proj(v3))
        f3 = self.f3_cat(torch.cat([f3, f4], dim=1))
        fq5 = self._up(self.f4_proj5(f5))
        fq = self.aggr(torch.cat([self.f4_proj3(f3), self.f4_proj4(f4), fq5], dim=1))
        fq = self.coordconv(fq)
        return FusedFeatures(fq, self.text_out(text), feats.text_pad_mask, None)

    def _up(self, x: Tensor) -> Tensor:
        if self.up5 == 1:
            return x
        return F.interpolate(x, scale_factor=self.up5, mode="bilinear", align_corners=False)

    def _pool(self, x: Tensor) -> Tensor:
        if self.pool3 == 1:
            return x
        h, w = x.shape[-2:]
        # a 2x2 average pool (CRIS's avg_pool2d), written as an adaptive pool so fvcore counts it
        return F.adaptive_avg_pool2d(x, (h // self.pool3, w // self.pool3))


def _ratio(coarse: int, fine: int, coarse_name: str, fine_name: str, strides) -> int:
    if coarse == fine:
        return 1
    if coarse == 2 * fine:
        return 2
    raise IncompatibleError(
        f"incompatible components: fpn 'cris' needs {coarse_name} at the stride of {fine_name} or twice it "
        f"(strides 8/16/32 as in CRIS, or one grid), but the encoder's last three stages have strides {strides}"
    )
