"""LAVT's pixel-word attention module (PWAM) and language gate as an FPN (seed000 Table IV; docs/decisions.md §2 PWAM).

Source read (not copied): `yz93/LAVT-RIS@1da0af9f:lib/backbone.py` (`PWAM`, `SpatialImageLanguageAttention`,
`MMBasicLayer.res_gate`, `MultiModalSwinTransformer.init_weights`) and `lib/segmentation.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import IncompatibleError, RisbenchError
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

TEXT_SOURCES = ("last", "stage")


class WordAttention(nn.Module):
    """LAVT's spatial image-language attention: every pixel attends over the words.

    q = InstanceNorm(W_q x) (normalised over the pixels, per channel), k = W_k l, v = W_v l (padded words zeroed),
    softmax(q k^T * key_dim^-0.5) over the non-padded words (the scale uses all key channels, not the head width),
    out = InstanceNorm(W_o (attn v)). 1x1 Conv1d in LAVT = Linear here (same weights, same MACs).
    """

    def __init__(self, v_dim: int, l_dim: int, key_dim: int, value_dim: int, out_dim: int, num_heads: int = 1):
        super().__init__()
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"key/value widths {key_dim}/{value_dim} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.query = nn.Linear(v_dim, key_dim)
        self.query_norm = nn.InstanceNorm1d(key_dim)
        self.key = nn.Linear(l_dim, key_dim)
        self.value = nn.Linear(l_dim, value_dim)
        self.out = nn.Linear(value_dim, out_dim)
        self.out_norm = nn.InstanceNorm1d(out_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: Tensor, lang: Tensor, pad: Tensor) -> Tensor:
        """x (B, N, C_v) pixels, lang (B, L, C_l) words, pad (B, L) True = padding -> (B, N, out_dim)."""
        q = self.query_norm(self.query(x).transpose(1, 2)).transpose(1, 2)
        keep = (~pad).unsqueeze(-1).to(lang.dtype)
        k, v = self.key(lang) * keep, self.value(lang) * keep
        mask = (~pad)[:, None, None, :]
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), mask, scale=self.scale)
        out = out.transpose(1, 2).flatten(2)
        return self.out_norm(self.out(out).transpose(1, 2)).transpose(1, 2)


class PWAM(nn.Module):
    """F = GELU(W_m (GELU(W_v x) * WordAttention(x, l))), LAVT's pixel-word attention module (dropout optional)."""

    def __init__(self, dim: int, l_dim: int, num_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.vis_proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.word_attn = WordAttention(dim, l_dim, dim, dim, dim, num_heads)
        self.mm_proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor, lang: Tensor, pad: Tensor) -> Tensor:
        return self.mm_proj(self.vis_proj(x) * self.word_attn(x, lang, pad))


class LanguageGate(nn.Module):
    """g = tanh(W_2 ReLU(W_1 F)), no biases (LAVT's `res_gate`); the stage output is x + g * F.

    LAVT zero-initialises both weights but then `init_weights` re-initialises every Linear of the backbone with
    trunc_normal(std 0.02); that is the effective init, and the one used here (zeros in both would never train).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Tanh())
        for m in (self.net[0], self.net[2]):
            nn.init.trunc_normal_(m.weight, std=0.02)

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f)


@dataclass
class PWAMFPNConfig:
    """Options of the PWAM FPN."""

    dim: int = 512  # d_w of the output map and text tokens
    gate: bool = True  # the language gate: aggregate x + tanh(MLP(F)) * F
    feed_back: bool = True  # aggregate the stage output x + (g *) F (True) or the PWAM output F alone (False)
    stages: list[int] | None = None  # which of the encoder's returned stages get a PWAM (0-based); None = all
    num_heads: int = 1  # LAVT's num_heads_fusion
    text_source: str = "last"  # the words each PWAM reads: the encoder's last returned text ("last") or its stage's
    dropout: float = 0.0  # LAVT's fusion_drop

    def __post_init__(self) -> None:
        if self.gate and not self.feed_back:
            raise ValueError("gate: true needs feed_back: true (the gate only scales the fed-back F); set gate: false")
        if self.text_source not in TEXT_SOURCES:
            raise ValueError(f"text_source must be one of {', '.join(TEXT_SOURCES)}, got '{self.text_source}'")
        if self.stages is not None and not self.stages:
            raise ValueError("stages must name at least one stage (or be null for all)")


@FPNS.register("pwam", config=PWAMFPNConfig)
class PWAMFPN(FPN):
    """LAVT's PWAM + language gate on each selected encoder stage, aggregated into one map at d_w.

    Per selected stage k (pixels only; a visual CLS is dropped): F_k = PWAM(x_k, words), and the stage output is
    x_k + tanh(MLP(F_k)) * F_k (`gate`), x_k + F_k (`gate: false`), or F_k (`feed_back: false`). In LAVT the gated
    output continues into the next Swin stage and F_k goes to the decoder; an FPN on a finished encoder cannot feed
    back, so `feed_back` decides which of the two is aggregated (FLAG, docs/decisions.md §2 PWAM).
    - single-scale encoder (BEiT-3): concat_k(stage outputs) -> Linear -> d_w, as the Shared FPN's W_f.
    - multi-scale encoder (Swin): `FusedFeatures.pyramid` = the stage outputs at their own widths, finest first
      (trait `pyramid`), and `visual` = the coarsest one projected to d_w.
    Text: the encoder's last text tokens projected to d_w (mask head's CLS); the text and coarsest-map projections
    are identities where the widths already match. Key/value width = the stage width and one head, as LAVT.
    Words: the encoder's last text tokens for every stage (`text_source: last`; LAVT reads BERT's final states).
    Counts (BEiT-3-B, d_w 512, 480 px, 20 tokens; fpn component; paper Table IV: 14M / 13G):
      4 stages + gate (default) 20.9M / 14.4G; 4 stages, no gate 16.1M / 10.1G; 3 stages + gate 15.7M / 10.8G.
    PWAM + gate alone (without our concat->512 aggregation, 1.2-1.6M / 1.1-1.4G, and the 0.4M word projection):
    14.2M for 3 stages + gate or 4 without gate (the paper's params), 18.9M / 13.0G for 4 + gate (its FLOPs);
    no one reading gives both of the paper's numbers.
    """

    tiny_options: ClassVar[dict[str, Any]] = {"dim": 16}

    requires = frozenset({"text_tokens"})

    def __init__(self, cfg: PWAMFPNConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        n = len(in_spec.visual_dims)
        stages = list(range(n)) if cfg.stages is None else list(cfg.stages)
        bad = [s for s in stages if not 0 <= s < n] + [s for i, s in enumerate(stages) if s in stages[:i]]
        if bad:
            raise RisbenchError(f"fpn 'pwam': stages {stages} must be distinct indices into the encoder's {n} stages")
        stages.sort(key=lambda s: (in_spec.visual_strides[s], s))  # finest first
        self.cfg = cfg
        self.stages = stages
        dims = [in_spec.visual_dims[s] for s in stages]
        strides = [in_spec.visual_strides[s] for s in stages]
        self.multi_scale = len(set(in_spec.visual_strides)) > 1
        self.pwam = nn.ModuleList([PWAM(d, in_spec.text_dim, cfg.num_heads, cfg.dropout) for d in dims])
        self.gate = nn.ModuleList([LanguageGate(d) for d in dims]) if cfg.gate else None
        traits = {"text_tokens"}
        if self.multi_scale:
            self.fuse = nn.Linear(dims[-1], cfg.dim) if dims[-1] != cfg.dim else nn.Identity()
            traits.add("pyramid")
            self.out_spec = FusedSpec(cfg.dim, strides[-1], frozenset(traits), tuple(dims), tuple(strides))
        else:
            if len(set(dims)) != 1:
                raise IncompatibleError(
                    f"incompatible components: fpn 'pwam' concatenates single-scale stages, which needs one width, "
                    f"but the encoder gives visual dims {in_spec.visual_dims}"
                )
            self.fuse = nn.Linear(len(dims) * dims[0], cfg.dim)
            self.out_spec = FusedSpec(cfg.dim, strides[-1], frozenset(traits))
        # no projection where the width already matches (LAVT-style models keep BERT's 768-d words)
        self.text_proj = nn.Linear(in_spec.text_dim, cfg.dim) if in_spec.text_dim != cfg.dim else nn.Identity()

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        pad = feats.text_pad_mask
        outs = []
        for j, s in enumerate(self.stages):
            x = map_to_tokens(feats.visual[s])
            words = feats.text[s] if self.cfg.text_source == "stage" else feats.text[-1]
            f = self.pwam[j](x, words, pad)
            if self.cfg.feed_back:
                f = x + (self.gate[j](f) * f if self.gate is not None else f)
            outs.append(f)
        text = self.text_proj(feats.text[-1])
        if self.multi_scale:
            pyramid = [tokens_to_map(f, feats.visual[s].shape[-2:]) for f, s in zip(outs, self.stages, strict=True)]
            visual = tokens_to_map(self.fuse(outs[-1]), feats.visual[self.stages[-1]].shape[-2:])
            return FusedFeatures(visual, text, pad, None, pyramid)
        visual = tokens_to_map(self.fuse(torch.cat(outs, dim=-1)), feats.visual[self.stages[-1]].shape[-2:])
        return FusedFeatures(visual, text, pad, None)
