"""RefSegformer's pixel decoder (`--use_pixel_decoder`; jianzongwu/robust-ref-seg@e7c7da6f,
model/msdeformattn_pixel_decoder.py, Mask2Former's MSDeformAttnPixelDecoder on mmcv 1.7, and the `mask_conv` of
model/segmentation_decoder_fusion.py). Read, not copied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import IncompatibleError
from risbench.models.decoders.refsegformer_common import TwoClassConv
from risbench.models.interfaces import (
    Decoder,
    DecoderOutput,
    EncoderFeatures,
    FeatureSpec,
    FusedFeatures,
    FusedSpec,
    map_to_tokens,
)
from risbench.models.msdeform_attn import DeformEncoderLayer, reference_points, sine_position
from risbench.registry import DECODERS


class ConvGN(nn.Module):
    """mmcv's ConvModule(conv, norm=GN, act=None|ReLU): keys `conv.*` and `gn.*`."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int, bias: bool, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias)
        self.gn = nn.GroupNorm(groups, cout)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.gn(self.conv(x))
        return F.relu(x) if self.relu else x


class DeformEncoder(nn.Module):
    """mmdet's DetrTransformerEncoder of post-norm layers (no final norm): key prefix `layers.N.`."""

    def __init__(self, cfg: RefSegformerPixelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformEncoderLayer(cfg.dim, cfg.num_heads, cfg.num_levels, cfg.num_points, cfg.ffn_dim, cfg.dropout)
            for _ in range(cfg.num_layers)
        )

    def forward(self, x: Tensor, pos: Tensor, ref: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        for layer in self.layers:
            x = layer(x, pos, ref, shapes)
        return x


@dataclass
class RefSegformerPixelConfig:
    """Options of the RefSegformer pixel decoder (defaults: the released model's, mmdet's MSDeformAttnPixelDecoder
    defaults as `segmentation_decoder_fusion.py` builds it)."""

    dim: int = 256  # feat_channels = out_channels
    num_layers: int = 6
    num_heads: int = 8
    num_levels: int = 3  # the coarsest levels that go through deformable attention; the rest through an FPN path
    num_points: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.0
    num_groups: int = 32  # GroupNorm groups
    # also register the cross-attention decoder's modules that the released pixel build holds but never calls
    # (17.9M at Swin-B widths), to count parameters as the released code does
    release_unused_params: bool = False


@DECODERS.register("refsegformer_pixel", config=RefSegformerPixelConfig)
class RefSegformerPixelDecoder(Decoder):
    """RefSegformer's pixel decoder: multi-scale deformable attention over the 3 coarsest pyramid levels, an FPN
    step to the finest, then a 1x1 conv to 2 classes (returned as fg - bg).

    Pyramid (finest first; the FPN's `pyramid` trait; RefSegformer: Swin stage 1 and the VLTF outputs of stages
    2-4 at strides 4-32): level k of the `num_levels` coarsest -> Conv1x1 (bias) + GN -> D; the tokens of all of
    them, with sine positions plus a learned level embedding on queries, through 6 post-norm layers of deformable
    attention (8 heads, 4 points per level, reference = the pixel centre on every level) and FFN 1024; the finest
    level -> Conv1x1 (no bias) + GN, plus the bilinear upsample of the finest encoded level, -> Conv3x3 + GN +
    ReLU -> Conv1x1 (`mask_feature`) -> `mask_conv` (2 classes). Logits at the finest level's stride (1/4).
    No auxiliary masks: the official loss's `--use_mask` terms only exist for the cross-attention decoder.
    `aux["exist_query"]`: the (B, D, H/4, W/4) mask feature, the existence head's query in the official code.
    `release_unused_params`: the released build also holds the cross-attention decoder's modules, never called.
    """

    requires = frozenset({"pyramid"})
    provides = frozenset({"exist_query"})
    tiny_options: ClassVar[dict[str, Any]] = {
        "dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "num_points": 2,
        "ffn_dim": 16,
        "num_groups": 4,
    }

    def __init__(self, cfg: RefSegformerPixelConfig, in_spec: FusedSpec, enc_spec: FeatureSpec) -> None:
        super().__init__()
        dims = tuple(in_spec.pyramid_dims)
        if not 1 <= cfg.num_levels < len(dims):
            raise IncompatibleError(
                f"incompatible components: decoder 'refsegformer_pixel' num_levels {cfg.num_levels} needs at least "
                f"{cfg.num_levels + 1} pyramid levels, but the fpn gives {len(dims)} (widths {dims})"
            )
        self.cfg = cfg
        self.aux_dims = {"exist_query": cfg.dim}
        n, lv = len(dims), cfg.num_levels
        self.strides = tuple(in_spec.pyramid_strides)
        # coarsest first, as mmdet orders input_convs and level_encoding
        self.input_convs = nn.ModuleList(
            ConvGN(dims[i], cfg.dim, 1, cfg.num_groups, True, False) for i in range(n - 1, n - lv - 1, -1)
        )
        self.encoder = DeformEncoder(cfg)
        self.level_encoding = nn.Embedding(lv, cfg.dim)
        rest = range(n - lv - 1, -1, -1)
        self.lateral_convs = nn.ModuleList(ConvGN(dims[i], cfg.dim, 1, cfg.num_groups, False, False) for i in rest)
        self.output_convs = nn.ModuleList(ConvGN(cfg.dim, cfg.dim, 3, cfg.num_groups, False, True) for _ in rest)
        self.mask_feature = nn.Conv2d(cfg.dim, cfg.dim, 1)
        self.mask_conv = TwoClassConv(cfg.dim)
        self._init_weights()
        if cfg.release_unused_params:
            from risbench.models.decoders.refsegformer_xattn import RefSegformerXattnConfig, RefSegformerXattnDecoder

            heads = (1,) * len(dims)  # the head count changes no parameter
            unused = RefSegformerXattnDecoder(RefSegformerXattnConfig(num_heads=heads), in_spec, enc_spec)
            for name in ("cross_attns", "norms", "mask_convs", "projects"):
                setattr(self, name, getattr(unused, name))

    def _init_weights(self) -> None:
        """The init the released code gets: its MSDeformAttnPixelDecoder's `init_weights` is never called, so each
        ConvModule keeps its own (Kaiming-normal, fan_out, ReLU gain; zero bias), MSDeformAttn its own (in
        `MSDeformAttn.__init__`), and the rest PyTorch's defaults (the level embedding N(0, 1))."""
        for m in (*self.input_convs, *self.lateral_convs, *self.output_convs):
            nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
            if m.conv.bias is not None:
                nn.init.zeros_(m.conv.bias)

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures) -> DecoderOutput:
        pyramid = fused.pyramid
        n, lv = len(pyramid), self.cfg.num_levels
        tokens, pos, shapes = [], [], []
        for i in range(lv):
            x = self.input_convs[i](pyramid[n - 1 - i])
            h, w = x.shape[-2:]
            p = sine_position(h, w, self.cfg.dim // 2, x) + self.level_encoding.weight[i].view(1, -1, 1, 1).to(x.dtype)
            tokens.append(map_to_tokens(x))
            pos.append(map_to_tokens(p.expand(x.shape[0], -1, -1, -1)))
            shapes.append((h, w))
        x = torch.cat(tokens, 1)
        ref = reference_points(shapes, x.shape[0], x.device, x.dtype)
        memory = self.encoder(x, torch.cat(pos, 1), ref, shapes)
        outs = [
            t.transpose(1, 2).reshape(t.shape[0], -1, h, w)
            for t, (h, w) in zip(memory.split([h * w for h, w in shapes], 1), shapes, strict=True)
        ]
        for j, i in enumerate(range(n - lv - 1, -1, -1)):
            cur = self.lateral_convs[j](pyramid[i])
            y = cur + F.interpolate(outs[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(self.output_convs[j](y))
        feature = self.mask_feature(outs[-1])
        return DecoderOutput(self.mask_conv(feature), {"exist_query": feature})
