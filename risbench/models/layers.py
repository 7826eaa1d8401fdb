"""Building blocks shared by several components: SDPA attention, MLP, stochastic depth, conv blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `p` (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head attention through `F.scaled_dot_product_attention` (counted by our fvcore handle).

    Queries come from `x`; keys/values from `context` (self-attention when None).
    `key_mask`: bool, broadcastable to (B, heads, Nq, Nk), True = attend.
    """

    def __init__(
        self, dim: int, num_heads: int, kv_dim: int | None = None, bias: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.dropout = dropout  # on the attention weights, training only (nn.MultiheadAttention's dropout)
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(kv_dim, dim, bias=bias)
        self.v_proj = nn.Linear(kv_dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q, k, v = self.q_proj(x), self.k_proj(context), self.v_proj(context)
        out = sdpa_heads(q, k, v, self.num_heads, key_mask, self.dropout if self.training else 0.0)
        return self.out_proj(out)

    def probs(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        """The attention weights (B, heads, Nq, Nk) of `forward(x, context, key_mask)`."""
        context = x if context is None else context
        return attention_probs(self.q_proj(x), self.k_proj(context), self.num_heads, key_mask)


def attention_probs(q: Tensor, k: Tensor, num_heads: int, key_mask: Tensor | None = None) -> Tensor:
    """The softmax weights (B, heads, Nq, Nk) that `sdpa_heads` applies (for attention maps, not training)."""
    b, nq, d = q.shape
    hd = d // num_heads
    q = q.view(b, nq, num_heads, hd).transpose(1, 2)
    k = k.view(b, k.shape[1], num_heads, hd).transpose(1, 2)
    logits = (q @ k.transpose(-2, -1)) * hd**-0.5
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask, float("-inf"))
    return logits.softmax(dim=-1)


def sdpa_heads(
    q: Tensor, k: Tensor, v: Tensor, num_heads: int, key_mask: Tensor | None = None, dropout_p: float = 0.0
) -> Tensor:
    """Split (B, N, D) q/k/v into heads, run SDPA, merge heads back to (B, Nq, D)."""
    b, nq, d = q.shape
    nk = k.shape[1]
    hd = d // num_heads
    q = q.view(b, nq, num_heads, hd).transpose(1, 2)
    k = k.view(b, nk, num_heads, hd).transpose(1, 2)
    v = v.view(b, nk, num_heads, v.shape[-1] // num_heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(b, nq, -1)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, bias: bool = False, stride: int = 1) -> nn.Sequential:
    """Conv(k, same padding) -> BN -> ReLU, the block CRIS and the Shared-RIS head use."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def masked_mean(tokens: Tensor, pad_mask: Tensor) -> Tensor:
    """Mean over non-padded tokens: (B, L, D), (B, L) True=pad -> (B, D)."""
    keep = (~pad_mask).unsqueeze(-1).to(tokens.dtype)
    return (tokens * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
