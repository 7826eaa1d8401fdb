"""DETRIS's neck (jiaqihuang01/DETRIS@c94b1e1e, model/layers.py::Neck; ETRIS's, for a plain ViT): three
maps to one width, each gated by cross-attention to the sentence, aggregated, CoordConv with a residual."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from risbench.errors import IncompatibleError
from risbench.models.fpn.cris import CoordConv
from risbench.models.interfaces import FPN, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec, map_to_tokens
from risbench.models.layers import Attention, conv_bn_relu
from risbench.registry import FPNS


@dataclass
class DetrisNeckConfig:
    """Options of the DETRIS neck (DETRIS: 512 wide, 8 heads)."""

    dim: int = 512  # fpn_out[1]
    num_heads: int = 8


class SentenceGate(nn.Module):
    """v * MHA(query = v, key = value = the one sentence token) (DETRIS's CrossAttn, dropout 0).

    With a single key the softmax is 1, so this is v * out_proj(v_proj(s)), a per-channel gate; the query
    and key projections are still computed (and counted), as in DETRIS, and get zero gradient."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)

    def forward(self, v: Tensor, sentence: Tensor) -> Tensor:
        b, c, h, w = v.shape
        tokens = map_to_tokens(v)
        gated = tokens * self.attn(tokens, sentence[:, None, :])
        return gated.transpose(1, 2).reshape(b, c, h, w)


def _deconv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """ConvTranspose 1x1 (stride 1, no bias) -> BN -> ReLU (DETRIS's deconv_layer for the third map)."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@FPNS.register("detris", config=DetrisNeckConfig)
class DetrisNeck(FPN):
    """On the last three encoder maps v3, v4, v5 (DETRIS: DINOv2 blocks 4, 8 and the final norm, one grid):
    conv1x1-BN-ReLU each (deconv 1x1 for v5) to `dim`; s = Linear(sentence); fq_k = v_k * MHA(v_k, s);
    fq = conv1x1(concat fq3..5); fq = conv3x3(CoordConv3x3(fq)) + fq. Output at v4's grid.

    Text for the decoder: the encoder's words unchanged (a Linear to `dim` only when their width differs,
    never in DETRIS); the sentence vector passes through for the projector (trait `sentence`)."""

    requires = frozenset({"sentence", "single_scale"})
    tiny_options: ClassVar[dict[str, Any]] = {"dim": 16, "num_heads": 2}

    def __init__(self, cfg: DetrisNeckConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        if len(in_spec.visual_dims) < 3:
            raise IncompatibleError(
                "incompatible components: fpn 'detris' needs 3 encoder maps, the encoder returns "
                f"{len(in_spec.visual_dims)}"
            )
        d = cfg.dim
        c3, c4, c5 = in_spec.visual_dims[-3:]
        self.f3_proj = conv_bn_relu(c3, d, 1)
        self.f4_proj = conv_bn_relu(c4, d, 1)
        self.f5_proj = _deconv_bn_relu(c5, d)
        self.txt_proj = nn.Linear(in_spec.sentence_dim, d)
        self.fusion3 = SentenceGate(d, cfg.num_heads)
        self.fusion4 = SentenceGate(d, cfg.num_heads)
        self.fusion5 = SentenceGate(d, cfg.num_heads)
        self.aggr = conv_bn_relu(3 * d, d, 1)
        self.coordconv = nn.Sequential(CoordConv(d, d), conv_bn_relu(d, d, 3))
        self.text_out = nn.Identity() if in_spec.text_dim == d else nn.Linear(in_spec.text_dim, d)
        self.out_spec = FusedSpec(
            d, in_spec.visual_strides[-2], frozenset({"text_tokens", "sentence"}), sentence_dim=in_spec.sentence_dim
        )

    def flop_parts(self) -> dict[str, str]:
        return {"neck": ""}

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        if feats.sentence is None:
            raise IncompatibleError("fpn 'detris' needs the encoder's sentence vector")
        v3, v4, v5 = feats.visual[-3:]
        s = self.txt_proj(feats.sentence)
        fq3 = self.fusion3(self.f3_proj(v3), s)
        fq4 = self.fusion4(self.f4_proj(v4), s)
        fq5 = self.fusion5(self.f5_proj(v5), s)
        fq = self.aggr(torch.cat([fq3, fq4, fq5], dim=1))
        fq = self.coordconv(fq) + fq
        return FusedFeatures(fq, self.text_out(feats.text[-1]), feats.text_pad_mask, None, sentence=feats.sentence)
