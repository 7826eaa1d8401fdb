"""DMMI's in-backbone interaction: a bidirectional PWAM after every Swin stage, which also updates the words.

Source read (not copied): `toggle1995/RIS-DMMI@753cd60:lib/backbone.py` — `MMBasicLayer.__init__/forward`
(fusion, res_gate, W_l), `PWAM` (its `image_lang_att` is `SpatialImageInteraction`; `SpatialImageLanguageAttention`
is defined but unused, it needs an undefined `Conv_DCFD`), `SpatialImageInteraction`, `RefineVisualSim`,
`RefineLanSim`; `init_weights` (trunc_normal 0.02 on every Linear, so the zero-init of res_gate is overwritten).
Module names follow the released ones, so that a released backbone's keys map one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.models.stage_fusion.base import FusionOutput, StageFusion, StageInfo
from risbench.registry import STAGE_FUSIONS

WORD_WINDOW_PADS = ("zero", "replicate")
_NEG = 1e4  # the released additive mask: logits + (1e4 * keep - 1e4)


def _masked_softmax(logits: Tensor, keep: Tensor) -> Tensor:
    """softmax(logits + 1e4 * keep - 1e4) over the last axis, as released (a fully masked row stays uniform)."""
    return (logits + (_NEG * keep - _NEG)).softmax(dim=-1)


class RefineVisualSim(nn.Module):
    """Pixel -> word attention weights whose queries see a k x k neighbourhood (k = 1, 3, 5).

    q = IN(conv_kxk(IN(W_q x))) with W_q to key/(1, 2, 4) channels; k = W_k l (padded words zeroed);
    softmax(q k^T * key^-0.5) over the valid words -> (B, HW, N). The released unfold + 1x1 Conv1d is the
    k x k Conv2d written here (same weights reshaped, same multiply-adds, zero padding at the borders)."""

    def __init__(self, v_in: int, l_in: int, key: int, kernel: int) -> None:
        super().__init__()
        inner = key // {1: 1, 3: 2, 5: 4}[kernel]
        self.scale = key**-0.5
        self.f_key = nn.Sequential(nn.Conv1d(l_in, key, 1))
        self.f_query = nn.Sequential(nn.Conv1d(v_in, inner, 1), nn.InstanceNorm1d(inner))
        self.f_query2 = nn.Sequential(nn.Conv2d(inner, key, kernel, padding=kernel // 2), nn.InstanceNorm1d(key))

    def forward(self, x: Tensor, grid: tuple[int, int], lang: Tensor, keep: Tensor) -> Tensor:
        """x (B, C, HW), lang (B, D, N), keep (B, 1, N) 1 = valid word -> (B, HW, N)."""
        q = self.f_query(x).unflatten(2, grid)
        q = self.f_query2[1](self.f_query2[0](q).flatten(2))
        k = self.f_key(lang) * keep
        return _masked_softmax((q.transpose(1, 2) @ k) * self.scale, keep)


class RefineLanSim(nn.Module):
    """Word -> pixel attention weights whose queries see a window of k words (k = 1, 2, 3; k//2 before).

    q = conv_k(W_q l) (l_in channels, W_q to key/(1, 2, 3)); k = IN(W_k x) (l_in channels); softmax(q k^T *
    key^-0.5) over the pixels -> (B, N, HW); padded words' queries are zeroed (their rows stay uniform).
    The released unfold + 1x1 Conv1d is the k-wide Conv1d written here. Outside the sentence the window
    reads zeros (`word_window_pad: zero`), or, as released, the padded words' features and a replicated end
    word (`replicate`; then the words next to the sentence's end depend on the padding)."""

    def __init__(self, v_in: int, l_in: int, key: int, kernel: int, window_pad: str) -> None:
        super().__init__()
        inner = key // kernel
        self.kernel = kernel
        self.window_pad = window_pad
        self.scale = key**-0.5
        self.f_key = nn.Sequential(nn.Conv1d(v_in, l_in, 1), nn.InstanceNorm1d(l_in))
        self.f_query = nn.Sequential(nn.Conv1d(l_in, inner, 1))
        self.f_query2 = nn.Sequential(nn.Conv1d(inner, l_in, kernel))

    def forward(self, x: Tensor, lang: Tensor, keep: Tensor) -> Tensor:
        """x (B, C, HW), lang (B, D, N), keep (B, 1, N) -> (B, N, HW)."""
        q = self.f_query(lang)
        pads = (self.kernel // 2, (self.kernel - 1) // 2)
        if self.window_pad == "zero":
            q = F.pad(q * keep, pads)
        elif self.kernel > 1:
            q = F.pad(q, pads, mode="replicate")
        q = self.f_query2(q) * keep
        k = self.f_key(x)
        logits = (q.transpose(1, 2) @ k) * self.scale
        return _masked_softmax(logits, keep.transpose(1, 2))


class SpatialImageInteraction(nn.Module):
    """Both directions at once: pixels gather the words (3 visual similarity scales, softmax-weighted) and words
    gather the pixels (3 word-window scales) -> (visual out (B, C, HW), language out (B, D, N))."""

    def __init__(self, v_in: int, l_in: int, key: int, value: int, window_pad: str) -> None:
        super().__init__()
        self.f_value = nn.Sequential(nn.Conv1d(l_in, value, 1))
        self.f_value_v = nn.Sequential(nn.Conv1d(v_in, l_in, 1), nn.InstanceNorm1d(l_in))
        self.W = nn.Sequential(nn.Conv1d(value, value, 1), nn.InstanceNorm1d(value))
        self.W2 = nn.Sequential(nn.Conv1d(l_in, l_in, 1))
        self.refineimg11 = RefineVisualSim(v_in, l_in, key, 1)
        self.refineimg33 = RefineVisualSim(v_in, l_in, key, 3)
        self.refineimg55 = RefineVisualSim(v_in, l_in, key, 5)
        self.refinelan11 = RefineLanSim(v_in, l_in, key, 1, window_pad)
        self.refinelan21 = RefineLanSim(v_in, l_in, key, 2, window_pad)
        self.refinelan31 = RefineLanSim(v_in, l_in, key, 3, window_pad)
        self.vis_weight = nn.Parameter(torch.ones(3))
        self.lan_weight = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor, grid: tuple[int, int], lang: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        value = self.f_value(lang) * keep
        wv = self.vis_weight.softmax(0)
        sims = (self.refineimg11, self.refineimg33, self.refineimg55)
        sim_v = sum(w * m(x, grid, lang, keep) for w, m in zip(wv, sims, strict=True))
        out_v = self.W((sim_v @ value.transpose(1, 2)).transpose(1, 2))
        value_v = self.f_value_v(x)
        wl = self.lan_weight.softmax(0)
        sims_l = (self.refinelan11, self.refinelan21, self.refinelan31)
        sim_l = sum(w * m(x, lang, keep) for w, m in zip(wl, sims_l, strict=True))
        out_l = self.W2((sim_l @ value_v.transpose(1, 2)).transpose(1, 2))
        return out_v, out_l


class InteractionPWAM(nn.Module):
    """DMMI's PWAM: F = GELU(W_m (GELU(W_v x) * visual out)), plus the interaction's language out."""

    def __init__(self, dim: int, l_in: int, dropout: float, window_pad: str) -> None:
        super().__init__()
        self.vis_project = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))
        self.image_lang_att = SpatialImageInteraction(dim, l_in, dim, dim, window_pad)
        self.project_mm = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor, grid: tuple[int, int], lang: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        lang_v, lang_l = self.image_lang_att(x, grid, lang, keep)
        return self.project_mm(self.vis_project(x) * lang_v), lang_l


@dataclass
class DMMIFusionConfig:
    """Options of DMMI's interaction module."""

    dropout: float = 0.0  # fusion_drop
    word_window_pad: str = "zero"  # zero | replicate (released; the words next to the end then see the padding)

    def __post_init__(self) -> None:
        if self.word_window_pad not in WORD_WINDOW_PADS:
            known = ", ".join(WORD_WINDOW_PADS)
            raise ValueError(f"word_window_pad must be one of {known}, got '{self.word_window_pad}'")


@STAGE_FUSIONS.register("dmmi", config=DMMIFusionConfig)
class DMMIFusion(StageFusion):
    """DMMI's in-backbone interaction (ICCV'23): a bidirectional PWAM that fuses the stage and updates the words.

    F, l' = InteractionPWAM(x, l); the next stage gets x + tanh(MLP(F)) * F and the words l + GELU(W_l l'); the
    encoder returns F (normed by its per-stage LayerNorm, DMMI's norm{i}). Default stages: all.

    One head (DMMI's num_heads_fusion 1-1-1-1); key = value = the stage width; the words stay at the text width
    (768). Swin-B, 480 px, 20 words: 49.5M parameters over the four stages (the released code's count)."""

    tiny_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: DMMIFusionConfig, info: StageInfo) -> None:
        super().__init__()
        c, d = info.dim, info.text_dim
        self.fusion = InteractionPWAM(c, d, cfg.dropout, cfg.word_window_pad)
        self.res_gate = nn.Sequential(nn.Linear(c, c, bias=False), nn.ReLU(), nn.Linear(c, c, bias=False), nn.Tanh())
        self.W_l = nn.Sequential(nn.Conv1d(d, d, 1), nn.GELU())
        for m in (self.res_gate[0], self.res_gate[2]):
            nn.init.trunc_normal_(m.weight, std=0.02)

    def forward(self, x: Tensor, grid: tuple[int, int], words: Tensor, pad: Tensor) -> FusionOutput:
        keep = (~pad)[:, None, :].to(x.dtype)
        lang = words.transpose(1, 2)
        f, lang_l = self.fusion(x.transpose(1, 2), grid, lang, keep)
        f = f.transpose(1, 2)
        visual = x + self.res_gate(f) * f
        new_words = (lang + self.W_l(lang_l)).transpose(1, 2)
        return FusionOutput(visual, f, new_words)
