"""CRIS's transformer decoder and projector (DerrickWang005/CRIS.pytorch@e596332f, model/layers.py::Decoder,
Projector; DETRIS runs them with 3 layers, FFN 512, and CLIP's 512-d words and sentence)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.models.interfaces import Decoder, DecoderOutput, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec
from risbench.models.layers import conv_bn_relu, sdpa_heads
from risbench.registry import DECODERS


@dataclass
class CrisDecoderConfig:
    """Options of the CRIS decoder + projector (DETRIS: 3 layers, 8 heads, FFN 512, dropout 0.1, kernel 3)."""

    num_layers: int = 3
    num_heads: int = 8
    dim_ffn: int = 512  # DETRIS / ETRIS 512; CRIS 2048
    dropout: float = 0.1
    kernel_size: int = 3  # the projector's dynamic kernel


class MHA(nn.Module):
    """nn.MultiheadAttention's maths with separate q/k/v inputs, through SDPA (counted), dropout on weights."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        p = self.dropout if self.training else 0.0
        return self.out_proj(sdpa_heads(self.q_proj(q), self.k_proj(k), self.v_proj(v), self.heads, key_mask, p))


def pos1d(d: int, n: int, like: Tensor) -> Tensor:
    """(n, d) sine/cosine positions (CRIS's pos1d)."""
    pos = torch.arange(n, device=like.device, dtype=like.dtype)[:, None]
    div = torch.exp(torch.arange(0, d, 2, device=like.device, dtype=like.dtype) * (-math.log(10000.0) / d))
    return torch.stack([torch.sin(pos * div), torch.cos(pos * div)], dim=-1).reshape(n, d)


def pos2d(d: int, h: int, w: int, like: Tensor) -> Tensor:
    """(h*w, d) 2-D sine/cosine positions: the first half of the channels encode x, the second y (CRIS's pos2d)."""
    half = d // 2
    px = pos1d(half, w, like)[None].expand(h, w, half)
    py = pos1d(half, h, like)[:, None].expand(h, w, half)
    return torch.cat([px, py], dim=-1).reshape(h * w, d)


class DecoderLayer(nn.Module):
    """Pre-norm: self-attn (+pos on q, k) -> LN -> residual; cross-attn to the words (+pos) -> LN -> residual;
    FFN Linear-ReLU-Dropout-LN-Linear -> residual."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn_norm, self.cross_attn_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = MHA(d, heads, dropout)
        self.cross_attn = MHA(d, heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(d, ffn), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.LayerNorm(ffn), nn.Linear(ffn, d)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, v: Tensor, t: Tensor, v_pos: Tensor, t_pos: Tensor, key_mask: Tensor) -> Tensor:
        v2 = self.norm1(v)
        v = v + self.drop(self.self_attn_norm(self.self_attn(v2 + v_pos, v2 + v_pos, v2)))
        v2 = self.norm2(v)
        v = v + self.drop(self.cross_attn_norm(self.cross_attn(v2 + v_pos, t + t_pos, t, key_mask)))
        return v + self.drop(self.ffn(self.norm3(v)))


class TransformerDecoder(nn.Module):
    """`num_layers` DecoderLayers over the flattened map, then a LayerNorm; (B, D, H, W) in and out."""

    def __init__(self, d: int, cfg: CrisDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg.num_heads, cfg.dim_ffn, cfg.dropout) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, vis: Tensor, txt: Tensor, pad_mask: Tensor) -> Tensor:
        b, c, h, w = vis.shape
        v = vis.flatten(2).transpose(1, 2)
        v_pos, t_pos = pos2d(c, h, w, v), pos1d(txt.shape[-1], txt.shape[1], txt)
        key_mask = (~pad_mask)[:, None, None, :]
        for layer in self.layers:
            v = layer(v, txt, v_pos, t_pos, key_mask)
        return self.norm(v).transpose(1, 2).reshape(b, c, h, w)


class Projector(nn.Module):
    """Visual: up x2 -> conv3x3 (D) -> up x2 -> conv3x3 (D/2) -> conv1x1; text: Linear(sentence -> D/2*k*k + 1),
    one k x k kernel and bias per sample, applied as a grouped convolution -> (B, 1, 4H, 4W)."""

    def __init__(self, d: int, word_dim: int, kernel: int) -> None:
        super().__init__()
        c = d // 2
        self.kernel = kernel
        self.vis = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(d, d, 3),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(d, c, 3),
            nn.Conv2d(c, c, 1),
        )
        self.txt = nn.Linear(word_dim, c * kernel * kernel + 1)

    def forward(self, x: Tensor, sentence: Tensor) -> Tensor:
        x = self.vis(x)
        b, c, h, w = x.shape
        params = self.txt(sentence)
        weight = params[:, :-1].reshape(b, c, self.kernel, self.kernel)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, params[:, -1], padding=self.kernel // 2, groups=b)
        return out.transpose(0, 1)


@DECODERS.register("cris", config=CrisDecoderConfig)
class CrisDecoder(Decoder):
    """CRIS's transformer decoder (visual queries attend to themselves and to the words, padding masked) and
    its projector (a per-sample dynamic kernel from the sentence vector). The sentence is the FPN's
    `sentence` (trait; CLIP's projected EOT) or, without it, the first text token at the FPN width (a
    decision, as the CRIS FPN's state here: BEiT-3's <s>, BERT's [CLS])."""

    requires = frozenset({"text_tokens"})
    tiny_options: ClassVar[dict[str, Any]] = {"num_layers": 1, "num_heads": 2, "dim_ffn": 16}

    def __init__(self, cfg: CrisDecoderConfig, in_spec: FusedSpec, enc_spec: FeatureSpec) -> None:
        super().__init__()
        self.use_sentence = "sentence" in in_spec.traits
        self.transformer = TransformerDecoder(in_spec.dim, cfg)
        self.projector = Projector(
            in_spec.dim, in_spec.sentence_dim if self.use_sentence else in_spec.dim, cfg.kernel_size
        )

    def flop_parts(self) -> dict[str, str]:
        return {"decoder": "transformer", "projector": "projector"}

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures) -> DecoderOutput:
        fq = self.transformer(fused.visual, fused.text, fused.text_pad_mask)
        sentence = fused.sentence if self.use_sentence and fused.sentence is not None else fused.text[:, 0]
        return DecoderOutput(self.projector(fq, sentence))
