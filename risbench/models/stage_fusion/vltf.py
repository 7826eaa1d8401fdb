"""RefSegformer's VLTF (vision-language transformer fusion) after Swin stages 2-4 (seed002; seed_specs §6, §9).

Source read (not copied): `jianzongwu/robust-ref-seg@e7c7da6:model/VLTF.py` (`VLTF`, `ScaledDotProductAttention`)
and `model/swin_transformer_encoder_fusion.py` (`BasicLayer.forward`: x <- x + VLTF(x), the decoder gets the
VLTF output alone; `SwinTransformerEncoderFusion.__init__`: a VLTF on stages 2..n_fuse+1 = 2-4 with the stage's
heads, num_mem 20, num_neg_mem 10, and `_init_weights` applied after the VLTFs are built). Module names follow
the released ones, so that a released checkpoint's keys map one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.models.stage_fusion.base import FusionOutput, StageFusion, StageInfo
from risbench.registry import STAGE_FUSIONS

PAD_KEYS = ("zero", "mask")


class VLTFAttention(nn.Module):
    """Multi-head attention as VLTF's `ScaledDotProductAttention` (fc_q/k/v/o, scale d_k^-0.5, no dropout here).

    `keep` (B, Nk) 1 = a valid key: with `pad_keys: zero` (released) the keys and values of the others are
    multiplied by 0 after their projections, so each keeps a logit of 0 and a value of 0 (a share of the softmax
    mass that carries nothing); with `mask` they are left out of the softmax."""

    def __init__(self, dim: int, num_heads: int, pad_keys: str = "zero") -> None:
        super().__init__()
        if dim % num_heads:
            raise RisbenchError(f"stage_fusion vltf: {num_heads} heads do not divide the stage width {dim}")
        self.num_heads = num_heads
        self.pad_keys = pad_keys
        self.fc_q = nn.Linear(dim, dim)
        self.fc_k = nn.Linear(dim, dim)
        self.fc_v = nn.Linear(dim, dim)
        self.fc_o = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _qkv(self, queries: Tensor, keys: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        q, k, v = self.fc_q(queries), self.fc_k(keys), self.fc_v(keys)
        mask = None
        if keep is not None:
            if self.pad_keys == "zero":
                k, v = k * keep[..., None], v * keep[..., None]
            else:
                mask = keep.bool()[:, None, None, :]
        return self._heads(q), self._heads(k), self._heads(v), mask

    def forward(self, queries: Tensor, keys: Tensor, keep: Tensor | None = None) -> Tensor:
        """queries (B, Nq, C), keys = values (B, Nk, C) -> (B, Nq, C)."""
        q, k, v, mask = self._qkv(queries, keys, keep)
        out = F.scaled_dot_product_attention(q, k, v, mask)
        return self.fc_o(out.transpose(1, 2).flatten(2))

    def probs(self, queries: Tensor, keys: Tensor, keep: Tensor | None = None) -> Tensor:
        """The attention weights (B, heads, Nq, Nk) of `forward` (for inspection and tests)."""
        q, k, _, mask = self._qkv(queries, keys, keep)
        logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits.softmax(-1)


@dataclass
class VLTFConfig:
    """Options of VLTF (released: 20 memory tokens, 10 blank tokens, the Swin stage's heads)."""

    num_mem: int = 20  # language memory tokens (>= 1)
    num_neg_mem: int = 10  # blank ("negative") tokens; 0 = none (the ablation without them)
    num_heads: int | None = None  # None = the Swin stage's heads (8 / 16 / 32 on Swin-B stages 2-4)
    pad_keys: str = "zero"  # zero (released: padded words zeroed in keys/values) | mask (left out of the softmax)
    vision_to_language: bool = True  # keep the released, never-used vision->language attention (params, frozen)

    def __post_init__(self) -> None:
        if self.num_mem < 1 or self.num_neg_mem < 0:
            raise ValueError(f"num_mem must be >= 1 and num_neg_mem >= 0, got {self.num_mem} and {self.num_neg_mem}")
        if self.pad_keys not in PAD_KEYS:
            raise ValueError(f"pad_keys must be one of {', '.join(PAD_KEYS)}, got '{self.pad_keys}'")


@STAGE_FUSIONS.register("vltf", config=VLTFConfig)
class VLTF(StageFusion):
    """RefSegformer's VLTF: memory tokens read the words, blank tokens join them, every pixel reads both.

    Default stages: 2-4 (no VLTF after stage 1).

    src = BN(W_in x); lan = W_l words (768 -> C); mem = Attn(memory tokens, lan) over the valid words;
    M = IN([blank; mem]) (normalised over the tokens, per channel); out = BN0(W_out IN(Attn(src, M))), where
    IN normalises over the pixels and BN0's weight starts at 0. The next stage gets x + out, the encoder returns
    out alone, and `memory` is M. The blank tokens depend on no word: a pixel whose query matches no memory can
    put its attention on them, so a sentence that names nothing in the image need not write into the map.
    The released module also attends from the words to the pixels (`vision_lan_fuse`) and never uses the
    result: with `vision_to_language` its parameters are kept (frozen: they never get a gradient), not run.
    """

    tiny_options: ClassVar[dict[str, Any]] = {"num_mem": 3, "num_neg_mem": 2}
    default_stages = (2, 3, 4)
    gives_memory = True

    def __init__(self, cfg: VLTFConfig, info: StageInfo) -> None:
        super().__init__()
        c = info.dim
        heads = cfg.num_heads or info.num_heads
        self.cfg = cfg
        self.memory_token = nn.Embedding(cfg.num_mem, c)
        self.neg_memory_token = nn.Embedding(cfg.num_neg_mem, c) if cfg.num_neg_mem else None
        self.input_proj = nn.Sequential(nn.Conv1d(c, c, 1), nn.BatchNorm1d(c))
        self.lan_proj = nn.Sequential(nn.Conv1d(info.text_dim, c, 1))
        if cfg.vision_to_language:
            self.vision_lan_fuse = VLTFAttention(c, heads, cfg.pad_keys)
            self.vision_lan_fuse.requires_grad_(False)
        self.memory_fuse = VLTFAttention(c, heads, cfg.pad_keys)
        self.feature_fuse = VLTFAttention(c, heads, cfg.pad_keys)
        self.output_proj = nn.Sequential(nn.Conv1d(c, c, 1), nn.BatchNorm1d(c))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # released: xavier on every >1-D tensor and a zero BN weight at the output; then the Swin backbone's
        # _init_weights (built after) gives every Linear trunc_normal(0.02) and a zero bias
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.output_proj[1].weight)

    @staticmethod
    def _norm_tokens(x: Tensor) -> Tensor:
        """InstanceNorm over the token axis of (B, N, C), per channel (no affine), as nn.InstanceNorm1d on (B, C, N)."""
        return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)

    def memories(self, words: Tensor, pad: Tensor) -> Tensor:
        """M = IN([blank; Attn(memory tokens, W_l words)]) (B, num_neg_mem + num_mem, C)."""
        b = words.shape[0]
        lan = self.lan_proj(words.transpose(1, 2)).transpose(1, 2)
        keep = (~pad).to(lan.dtype)
        mem = self.memory_fuse(self.memory_token.weight.expand(b, -1, -1), lan, keep)
        if self.neg_memory_token is not None:
            neg = self.neg_memory_token.weight.expand(b, -1, -1)
            mem = torch.cat([neg, mem], dim=1)
        return self._norm_tokens(mem) if mem.shape[1] > 1 else mem

    def pixel_queries(self, x: Tensor) -> Tensor:
        """src = BN(W_in x) (B, HW, C), the queries of the pixel -> memory attention."""
        return self.input_proj(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: Tensor, grid: tuple[int, int], words: Tensor, pad: Tensor) -> FusionOutput:
        mem = self.memories(words, pad)
        out = self.feature_fuse(self.pixel_queries(x), mem)
        out = self.output_proj(F.instance_norm(out.transpose(1, 2))).transpose(1, 2)
        return FusionOutput(x + out, out, words, mem)
