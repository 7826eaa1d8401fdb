"""Grounding DINO's bi-directional image-text attention block, as a reusable module.

Source read (not copied): `IDEA-Research/GroundingDINO@856dde20:groundingdino/models/GroundingDINO/fuse_modules.py`
(`BiMultiHeadAttention`, `BiAttentionBlock`) and `transformer.py` (how it is sized). Decisions in docs/decisions.md §2.

What the original does, and what we keep:
- pre-LN on each modality, then six linears: `v_proj`/`l_proj` give the *shared* query/key logits, `values_v_proj`/
  `values_l_proj` the two values, `out_v_proj`/`out_l_proj` map back to each modality's width; xavier-uniform
  weights, zero biases;
- one logit tensor S = (v_proj(v) * head_dim^-0.5) . l_proj(l)^T per head (N_v x N_l), used both ways:
  vision <- text: softmax over the text axis of S (text padding masked); text <- vision: softmax over the image
  axis of S^T (image padding masked, none here);
- stabilisation: S minus its max, clamped to +-50000; S^T minus its row max, clamped again;
- dropout on the attention probabilities, no FFN inside the block;
- layer scale gamma (init 1e-4, per channel) and drop path on each update, and the residual is added to the
  *layer-normed* input (v_out = LN(v) + DropPath(gamma_v * dv)), a quirk of the original kept as is.

One deviation: the original subtracts the max over the whole (batch x heads) logit tensor; we subtract the max
per sample, so that one sample's output never depends on another's (softmax is shift-invariant, so the two
differ only where the +-50000 clamp bites).

Sizing in Grounding DINO: v_dim = l_dim = d_model (256), embed_dim = dim_feedforward // 2 (1024 = 4 x d_model),
num_heads = nhead // 2 (4). Components that use this block default to the same ratios (`default_embed_dim`).

The logits are computed once with `torch.matmul` (fvcore counts matmul), not through SDPA, which would compute
them twice (once per direction) and so cost, and count, more than the original.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from risbench.models.layers import DropPath, Mlp

CLAMP = 50000.0  # the original's bound (kept within fp16 range)
MLP_ON = ("both", "visual", "none")


def default_embed_dim(width: int) -> int:
    """Grounding DINO's ratio: embed_dim = dim_feedforward // 2 = 4 x the width the block sits at."""
    return 4 * width


class BiMultiHeadAttention(nn.Module):
    """Bi-directional multi-head attention with one shared logit tensor (Grounding DINO)."""

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = nn.Dropout(dropout)
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for lin in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj, self.out_l_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, self.embed_dim)

    def forward(
        self, v: Tensor, lang: Tensor, v_pad_mask: Tensor | None = None, l_pad_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """v (B, N_v, v_dim), lang (B, N_l, l_dim); pad masks (B, N) bool, True = padding.

        Returns the updates (delta_v (B, N_v, v_dim), delta_l (B, N_l, l_dim))."""
        q = self._heads(self.v_proj(v) * self.scale)
        k = self._heads(self.l_proj(lang))
        val_v = self._heads(self.values_v_proj(v))
        val_l = self._heads(self.values_l_proj(lang))

        logits = torch.matmul(q, k.transpose(-1, -2))  # (B, H, N_v, N_l)
        logits = logits - logits.detach().amax(dim=(1, 2, 3), keepdim=True)
        logits = logits.clamp(-CLAMP, CLAMP)

        logits_t = logits.transpose(-1, -2)  # (B, H, N_l, N_v)
        logits_t = (logits_t - logits_t.detach().amax(dim=-1, keepdim=True)).clamp(-CLAMP, CLAMP)
        if v_pad_mask is not None:
            logits_t = logits_t.masked_fill(v_pad_mask[:, None, None, :], float("-inf"))
        if l_pad_mask is not None:
            logits = logits.masked_fill(l_pad_mask[:, None, None, :], float("-inf"))

        probs_v = self.dropout(logits.softmax(dim=-1))  # vision attends over words
        probs_l = self.dropout(logits_t.softmax(dim=-1))  # words attend over pixels
        out_v = self._merge(torch.matmul(probs_v, val_l))
        out_l = self._merge(torch.matmul(probs_l, val_v))
        return self.out_v_proj(out_v), self.out_l_proj(out_l)


class BiAttentionBlock(nn.Module):
    """Pre-LN bi-directional image-text attention with layer scale and drop path (Grounding DINO).

    forward(v, lang) -> (LN_v(v) + DropPath(gamma_v * dv), LN_l(lang) + DropPath(gamma_l * dl)).
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        init_values: float = 1e-4,
    ) -> None:
        super().__init__()
        self.norm_v = nn.LayerNorm(v_dim)
        self.norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads, dropout)
        self.drop_path = DropPath(drop_path)
        self.gamma_v = nn.Parameter(torch.full((v_dim,), float(init_values)))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), float(init_values)))

    def forward(
        self, v: Tensor, lang: Tensor, v_pad_mask: Tensor | None = None, l_pad_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        v = self.norm_v(v)
        lang = self.norm_l(lang)
        dv, dl = self.attn(v, lang, v_pad_mask, l_pad_mask)
        return v + self.drop_path(self.gamma_v * dv), lang + self.drop_path(self.gamma_l * dl)


class BiAttentionLayer(nn.Module):
    """A BiAttentionBlock followed by a pre-LN MLP with a residual: the fusion unit of the `bi_direction` FPN and
    decoder.

    `mlp_on`: "both" = one MLP shared by both modalities, over the joint sequence (the Shared decoder layer's MLP,
    seed000 Eq. 9); "visual" = the MLP on the visual tokens only (words leave with the block's update); "none" =
    the bare block. Grounding DINO follows its fusion block with an FFN on each modality (feature enhancer layer).
    """

    def __init__(
        self,
        dim: int,
        embed_dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mlp_on: str = "both",
        dropout: float = 0.0,
        drop_path: float = 0.0,
        init_values: float = 1e-4,
    ) -> None:
        super().__init__()
        if mlp_on not in MLP_ON:
            raise ValueError(f"mlp_on must be one of {', '.join(MLP_ON)}, got '{mlp_on}'")
        self.block = BiAttentionBlock(dim, dim, embed_dim, num_heads, dropout, drop_path, init_values)
        self.mlp_on = mlp_on
        if mlp_on != "none":
            self.norm = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, v: Tensor, t: Tensor, l_pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v, t = self.block(v, t, l_pad_mask=l_pad_mask)
        if self.mlp_on == "both":
            seq = torch.cat([v, t], dim=1)
            seq = seq + self.mlp(self.norm(seq))
            v, t = seq[:, : v.shape[1]], seq[:, v.shape[1] :]
        elif self.mlp_on == "visual":
            v = v + self.mlp(self.norm(v))
        return v, t
