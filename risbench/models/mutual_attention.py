"""RISAM's Mutual-Aware Attention block (seed003 §3.3, Eqs. 3-5), a library module for `fpn: risam`.

    Z_v = F_v W_v, Z_l = F_l W_l (bias-free), S = Z_v Z_l^T / sqrt(C)                  (B, L_v, L_l)
    A = softmax over words of (S + M);  F_lav = LN(A Z_l + Z_v),  F_val = LN(A^T Z_v + Z_l)

Mask M (Eq. 4, threshold tau; docs/decisions.md "RISAM"): `mask_reading`
  "relevance" (default): keep a (pixel, word) pair when sigmoid(S) >= tau; the reading consistent with the
              paper's tau ablation (a larger tau masks more pairs), Mask2Former-style masked attention;
  "literal":  Eq. 4 as printed, with r = 1 / (1 + e^S) = sigmoid(-S): keep a pair when r < tau.
The threshold is a step function, so no gradient flows through the mask. Text padding is always masked; a
pixel left with no word keeps all its unpadded words (Mask2Former's fix for an all-masked row).

Language-guided branch (`text_attention`): "transpose" (default, the paper as printed: the same A transposed,
so each word sums its pixels' weights without normalisation) or "softmax_pixels" (a softmax over pixels of
(S + M)^T per word, as Grounding DINO's bi-attention; a word with no kept pixel keeps all of them).

All products are explicit matmuls, so fvcore counts them (docs/decisions.md §0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MASK_READINGS = ("relevance", "literal")
TEXT_ATTENTION = ("transpose", "softmax_pixels")


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> Tensor:
    """(length, dim) fixed sine/cosine position table (Vaswani et al.): sin on even, cos on odd channels."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype or torch.float32)


def relevance_keep(logits: Tensor, tau: float, reading: str) -> Tensor:
    """(B, L_v, L_l) bool, True = the pair is kept by Eq. 4 under `reading` (no padding applied)."""
    with torch.no_grad():
        if reading == "relevance":
            return torch.sigmoid(logits) >= tau
        if reading == "literal":
            return torch.sigmoid(-logits) < tau
    raise ValueError(f"mask_reading must be one of {', '.join(MASK_READINGS)}, got '{reading}'")


class MutualAwareBlock(nn.Module):
    """forward(v (B, L_v, C_v), words (B, L_l, C_l), text_pad_mask (B, L_l) True = pad) -> (F_lav, F_val),
    both at width `dim`. `mask`: apply Eq. 4 (False: only text padding is masked, Table 3 #8);
    `language_branch`: False leaves F_val = LN(Z_l) (vision-guided attention only, VLT's SDF, Table 3 #6)."""

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        dim: int,
        tau: float = 0.35,
        mask: bool = True,
        mask_reading: str = "relevance",
        text_attention: str = "transpose",
        language_branch: bool = True,
    ) -> None:
        super().__init__()
        if mask_reading not in MASK_READINGS:
            raise ValueError(f"mask_reading must be one of {', '.join(MASK_READINGS)}, got '{mask_reading}'")
        if text_attention not in TEXT_ATTENTION:
            raise ValueError(f"text_attention must be one of {', '.join(TEXT_ATTENTION)}, got '{text_attention}'")
        self.w_v = nn.Linear(v_dim, dim, bias=False)
        self.w_l = nn.Linear(l_dim, dim, bias=False)
        self.norm_v = nn.LayerNorm(dim)
        self.norm_l = nn.LayerNorm(dim)
        self.scale = dim**-0.5
        self.tau, self.mask, self.mask_reading = float(tau), bool(mask), mask_reading
        self.text_attention, self.language_branch = text_attention, bool(language_branch)

    def forward(self, v: Tensor, words: Tensor, text_pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        zv, zl = self.w_v(v), self.w_l(words)
        logits = torch.matmul(zv, zl.transpose(1, 2)) * self.scale  # (B, L_v, L_l)
        real = ~text_pad_mask[:, None, :]  # (B, 1, L_l)
        keep = (
            relevance_keep(logits, self.tau, self.mask_reading)
            if self.mask
            else torch.ones_like(logits, dtype=torch.bool)
        )
        rows = keep & real
        rows = rows | (~rows.any(-1, keepdim=True) & real)  # a pixel with no kept word keeps all words
        attn = logits.masked_fill(~rows, float("-inf")).softmax(-1)
        f_lav = self.norm_v(torch.matmul(attn, zl) + zv)
        if not self.language_branch:
            return f_lav, self.norm_l(zl)
        if self.text_attention == "transpose":
            to_words = attn.transpose(1, 2)  # (B, L_l, L_v); padded words get zeros
        else:
            cols = keep | ~keep.any(1, keepdim=True)  # a word with no kept pixel keeps all pixels
            to_words = logits.masked_fill(~cols, float("-inf")).transpose(1, 2).softmax(-1)
        f_val = self.norm_l(torch.matmul(to_words, zv) + zl)
        return f_lav, f_val
