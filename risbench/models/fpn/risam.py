"""RISAM's Feature Enhancement and Mutual-Aware Attention blocks as one FPN (seed003 §3.2-3.3; docs/decisions.md
"RISAM"), with the paper's ablation variants as options.

Feature Enhancement (Eqs. 1-2), on the last three encoder maps F_v1, F_v2, F_v3 (SAM: global blocks 2-4):
    F^ = CBA([MLP(F_v1), MLP(F_v2)]),  F_v = CBA([MLP(F^), MLP(F_v3)])
MLP = per-token Linear(C_in, dim) -> GELU -> Linear(dim, dim); CBA = Conv3x3 (no bias) -> BN -> GELU.
`fe`: "layers" (the paper), "deep" (Table 2/6 "w/o FE": F_v = MLP(F_v3) only) or "vitdet" (Table 6: ViTDet's
simple feature pyramid on F_v3 at x2, x1, x1/2, resized back to F_v3's grid, in place of the three layers).

Fusion (`fusion`): "mutual" (the paper: `num_blocks` Mutual-Aware Attention blocks, models/mutual_attention.py),
or the replacements of Tables 2-3 built from what the harness has: "vision_guided" (MA without its language
branch ~ VLT's SDF), "transformer" (joint self-attention over [pixels; words], pre-LN, with an MLP ~ ReSTR's
TE), "bi_attention" (Grounding DINO's bi-directional block, models/bi_attention.py ~ BRINet's BCM),
"concat_conv" (Table 2 "r. MA": CBA convs over the map concatenated with the tiled mean word feature).
Words get a fixed sinusoidal position table first (`text_pos`, Fig. 3 "Pos. Enc."). Output: F_lav as the map,
F_val as the text tokens, both at `dim`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.bi_attention import BiAttentionLayer, default_embed_dim
from risbench.models.interfaces import FPN, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec, map_to_tokens
from risbench.models.layers import Attention, Mlp, masked_mean
from risbench.models.mutual_attention import MutualAwareBlock, sinusoidal_positions
from risbench.models.pyramid import SimpleFeaturePyramid, match_size
from risbench.registry import FPNS

FE_MODES = ("layers", "deep", "vitdet")
FUSIONS = ("mutual", "vision_guided", "transformer", "bi_attention", "concat_conv")


@dataclass
class RisamFpnConfig:
    """Options of the RISAM FPN (defaults: docs/decisions.md "RISAM")."""

    dim: int = 256  # C after Feature Enhancement (SAM's prompt width); ~6M trainable with the decoder
    fe: str = "layers"  # layers | deep | vitdet
    fusion: str = "mutual"  # mutual | vision_guided | transformer | bi_attention | concat_conv
    num_blocks: int = 2  # MA blocks (Table 4), or layers of the replacement fusion
    tau: float = 0.35
    mask: bool = True  # Eq. 4's attention mask (Table 3 #8: False)
    mask_reading: str = "relevance"  # relevance (keep sigmoid(S) >= tau) | literal (Eq. 4 as printed)
    text_attention: str = "transpose"  # transpose (A^T, as printed) | softmax_pixels
    text_pos: str = "sinusoidal"  # sinusoidal | none
    num_heads: int = 8  # transformer / bi_attention fusions only


def cba(cin: int, cout: int) -> nn.Sequential:
    """Conv3x3 (no bias) -> BN -> GELU (the paper's CBA)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


class MapMlp(Mlp):
    """The per-token MLP applied to a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FeatureEnhancement(nn.Module):
    """Eqs. 1-2 over the last three maps (or the "deep" / "vitdet" variants); (B, C_k, H, W) -> (B, dim, H, W)."""

    def __init__(self, in_dims: tuple[int, ...], dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        c1, c2, c3 = in_dims[-3:] if len(in_dims) >= 3 else (0, 0, in_dims[-1])
        if mode == "deep":
            self.deep = MapMlp(c3, dim, dim)
            return
        if mode == "vitdet":
            self.pyramid = SimpleFeaturePyramid(c3, (2.0, 1.0, 0.5), dim)
            c1 = c2 = c3 = dim
        elif len(in_dims) < 3:
            raise IncompatibleError(f"fpn 'risam': fe 'layers' needs 3 encoder maps, got {len(in_dims)}")
        self.mlp1, self.mlp2, self.mlp3 = MapMlp(c1, dim, dim), MapMlp(c2, dim, dim), MapMlp(c3, dim, dim)
        self.mlp_early = MapMlp(dim, dim, dim)
        self.cba1, self.cba2 = cba(2 * dim, dim), cba(2 * dim, dim)

    def forward(self, maps: list[Tensor]) -> Tensor:
        v3 = maps[-1]
        if self.mode == "deep":
            return self.deep(v3)
        if self.mode == "vitdet":
            v1, v2, v3 = (match_size(m, v3.shape[-2:], align_corners=False) for m in self.pyramid(v3))
        else:
            v1, v2 = maps[-3], maps[-2]
        early = self.cba1(torch.cat([self.mlp1(v1), self.mlp2(v2)], 1))
        return self.cba2(torch.cat([self.mlp_early(early), self.mlp3(v3)], 1))


class MutualFusion(nn.Module):
    """`num_blocks` Mutual-Aware Attention blocks; block k > 1 reads the previous (F_lav, F_val)."""

    def __init__(self, cfg: RisamFpnConfig, text_dim: int, language_branch: bool) -> None:
        super().__init__()
        opts = {"tau": cfg.tau, "mask": cfg.mask, "mask_reading": cfg.mask_reading}
        opts |= {"text_attention": cfg.text_attention, "language_branch": language_branch}
        dims = [text_dim] + [cfg.dim] * (cfg.num_blocks - 1)
        self.blocks = nn.ModuleList(MutualAwareBlock(cfg.dim, d, cfg.dim, **opts) for d in dims)

    def forward(self, v: Tensor, words: Tensor, pad: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        for block in self.blocks:
            v, words = block(v, words, pad)
        return v, words


class TransformerFusion(nn.Module):
    """Pre-LN transformer encoder layers over the joint sequence [pixels; words] (ReSTR's TE), padding masked."""

    def __init__(self, cfg: RisamFpnConfig, text_dim: int) -> None:
        super().__init__()
        d = cfg.dim
        self.text_in = nn.Linear(text_dim, d)
        self.norms1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(cfg.num_blocks))
        self.attns = nn.ModuleList(Attention(d, cfg.num_heads) for _ in range(cfg.num_blocks))
        self.norms2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(cfg.num_blocks))
        self.mlps = nn.ModuleList(Mlp(d, 4 * d) for _ in range(cfg.num_blocks))

    def forward(self, v: Tensor, words: Tensor, pad: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        n = v.shape[1]
        x = torch.cat([v, self.text_in(words)], 1)
        keep = torch.cat([torch.ones_like(pad[:, :1]).expand(-1, n), ~pad], 1)[:, None, None, :]
        for n1, attn, n2, mlp in zip(self.norms1, self.attns, self.norms2, self.mlps, strict=True):
            x = x + attn(n1(x), key_mask=keep)
            x = x + mlp(n2(x))
        return x[:, :n], x[:, n:]


class BiAttentionFusion(nn.Module):
    """Grounding DINO bi-attention layers (no MLP), words first projected to `dim` (~ BRINet's BCM)."""

    def __init__(self, cfg: RisamFpnConfig, text_dim: int) -> None:
        super().__init__()
        self.text_in = nn.Linear(text_dim, cfg.dim)
        emb = default_embed_dim(cfg.dim)
        self.layers = nn.ModuleList(
            BiAttentionLayer(cfg.dim, emb, cfg.num_heads, mlp_on="none") for _ in range(cfg.num_blocks)
        )

    def forward(self, v: Tensor, words: Tensor, pad: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        t = self.text_in(words)
        for layer in self.layers:
            v, t = layer(v, t, pad)
        return v, t


class ConcatConvFusion(nn.Module):
    """`num_blocks` CBAs over [map; tiled masked-mean word feature] (Table 2 "r. MA"); words: LN(Linear)."""

    def __init__(self, cfg: RisamFpnConfig, text_dim: int) -> None:
        super().__init__()
        self.text_in = nn.Linear(text_dim, cfg.dim)
        self.norm_l = nn.LayerNorm(cfg.dim)
        self.convs = nn.ModuleList(cba(2 * cfg.dim if i == 0 else cfg.dim, cfg.dim) for i in range(cfg.num_blocks))

    def forward(self, v: Tensor, words: Tensor, pad: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        t = self.text_in(words)
        b, n, d = v.shape
        h, w = grid
        x = torch.cat([v, masked_mean(t, pad)[:, None, :].expand(b, n, d)], -1)
        x = x.transpose(1, 2).reshape(b, 2 * d, h, w)
        for conv in self.convs:
            x = conv(x)
        return map_to_tokens(x), self.norm_l(t)


@FPNS.register("risam", config=RisamFpnConfig)
class RisamFPN(FPN):
    """Feature Enhancement then Mutual-Aware Attention (or a replacement): encoder maps + words -> the map F_lav
    (B, dim, H, W) at the last map's grid and the words F_val (B, L, dim); the sentence vector passes through."""

    requires = frozenset({"single_scale", "text_tokens"})
    tiny_options: ClassVar[dict[str, Any]] = {"dim": 16, "num_heads": 2}

    def __init__(self, cfg: RisamFpnConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        for key, value, known in (("fe", cfg.fe, FE_MODES), ("fusion", cfg.fusion, FUSIONS)):
            if value not in known:
                raise RisbenchError(f"fpn 'risam': {key} must be one of {', '.join(known)}, got '{value}'")
        if cfg.text_pos not in ("sinusoidal", "none") or cfg.num_blocks < 1:
            raise RisbenchError("fpn 'risam': text_pos must be sinusoidal or none, and num_blocks >= 1")
        self.cfg = cfg
        self.fe = FeatureEnhancement(in_spec.visual_dims, cfg.dim, cfg.fe)
        t = in_spec.text_dim
        if cfg.fusion in ("mutual", "vision_guided"):
            self.fusion = MutualFusion(cfg, t, language_branch=cfg.fusion == "mutual")
        else:
            cls = {"transformer": TransformerFusion, "bi_attention": BiAttentionFusion, "concat_conv": ConcatConvFusion}
            self.fusion = cls[cfg.fusion](cfg, t)
        traits = {"text_tokens"} | ({"sentence"} & in_spec.traits)
        self.out_spec = FusedSpec(
            cfg.dim, in_spec.visual_strides[-1], frozenset(traits), sentence_dim=in_spec.sentence_dim
        )

    def flop_parts(self) -> dict[str, str]:
        return {"feature enhancement": "fe", f"fusion ({self.cfg.fusion})": "fusion"}

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        fv = self.fe(feats.visual)
        b, d, h, w = fv.shape
        words = feats.text[-1]
        if self.cfg.text_pos == "sinusoidal":
            words = words + sinusoidal_positions(words.shape[1], words.shape[2], words.device, words.dtype)
        v, t = self.fusion(map_to_tokens(fv), words, feats.text_pad_mask, (h, w))
        visual = v.transpose(1, 2).reshape(b, d, h, w)
        return FusedFeatures(visual, t, feats.text_pad_mask, None, sentence=feats.sentence)
