"""The building blocks of the BEiT-3 encoder (beit3.py), named as torchscale names them.

Every parameter maps onto an official checkpoint key: multiway copies, sub-LN feed-forward and attention, the
layer, the patch embedding (or a convolutional stem) and the body with its position tables."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.models.layers import DropPath, attention_probs, conv_bn_relu

# fairseq convention kept by torchscale: position ids start at 2, rows 0 and 1 of both tables are unused
POSITION_OFFSET = 2


class Multiway(nn.Module):
    """Two copies of a module: A for the first `split` tokens (vision: cls + patches), B for the rest (text).

    Mirrors torchscale's MultiwayNetwork (keys `<name>.A.*`, `<name>.B.*`), with the split passed in."""

    def __init__(self, make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.A = make()
        self.B = make()

    def forward(self, x: Tensor, split: int) -> Tensor:
        return torch.cat([self.A(x[:, :split]), self.B(x[:, split:])], dim=1)


class FeedForward(nn.Module):
    """fc1 -> GELU -> sub-LN (`ffn_layernorm`, over the hidden width) -> fc2."""

    def __init__(self, dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


class MultiwayAttention(nn.Module):
    """Self-attention with per-modality q/k/v/out projections and sub-LN; one softmax over all tokens."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.k_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.v_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.out_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.inner_attn_ln = Multiway(lambda: nn.LayerNorm(dim, eps=eps))

    def forward(self, x: Tensor, split: int, key_mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        h = self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)

        q, k, v = (heads(p(x, split)) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # scale head_dim**-0.5
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.out_proj(self.inner_attn_ln(out, split), split)

    def probs(self, x: Tensor, split: int, key_mask: Tensor | None) -> Tensor:
        """The softmax weights (B, heads, N, N) of `forward` on the same input (for attention maps)."""
        return attention_probs(self.q_proj(x, split), self.k_proj(x, split), self.num_heads, key_mask)


class Beit3Layer(nn.Module):
    """Pre-LN multiway block: x + MSA(LN(x)); x + FFN(LN(x)), with per-modality LNs and FFNs."""

    def __init__(self, dim: int, num_heads: int, eps: float, drop_path: float) -> None:
        super().__init__()
        self.self_attn_layer_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps))
        self.self_attn = MultiwayAttention(dim, num_heads, eps)
        self.final_layer_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps))
        self.ffn = Multiway(lambda: FeedForward(dim, 4 * dim, eps))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, split: int, key_mask: Tensor | None) -> Tensor:
        x = x + self.drop_path(self.self_attn(self.self_attn_layer_norm(x, split), split, key_mask))
        return x + self.drop_path(self.ffn(self.final_layer_norm(x, split), split))


class VisionEmbed(nn.Module):
    """Patch embedding with a prepended CLS token; `mask_token` is for MIM only.

    stem "patch" is BEiT-3's (Conv p x p, stride p). stem "conv" is the convolutional stem of Xiao et al.
    2021 ("Early convolutions help transformers see better"): log2(p) Conv3x3 stride 2 + BN + ReLU with
    widths rising to `dim`, then Conv1x1. From random init it learns local shape much sooner than one
    linear map per patch; official checkpoints have no weights for it (random init only)."""

    def __init__(self, dim: int, patch_size: int, stem: str = "patch") -> None:
        super().__init__()
        if stem == "conv":
            n = int(math.log2(patch_size))
            if 2**n != patch_size:
                raise RisbenchError(f"encoder beit3: stem 'conv' needs a power-of-two patch_size, got {patch_size}")
            widths = [3] + [max(dim >> (n - 1 - i), 8) for i in range(n)]
            self.stem = nn.Sequential(
                *[conv_bn_relu(cin, cout, 3, stride=2) for cin, cout in zip(widths, widths[1:], strict=False)]
            )
            self.proj = nn.Conv2d(widths[-1], dim, kernel_size=1)
        else:
            self.stem = nn.Identity()
            self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # replaces masked patches in MIM (pretraining)

    def forward(self, image: Tensor) -> Tensor:
        x = self.proj(self.stem(image)).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class Beit3Body(nn.Module):
    """torchscale's `Encoder` part: position tables, the layers and the final multiway LayerNorm."""

    def __init__(self, dim, depth, heads, num_vision_tokens, max_text_positions, eps, drop_path) -> None:
        super().__init__()
        self.embed_positions = nn.Module()
        self.embed_positions.A = nn.Embedding(num_vision_tokens + POSITION_OFFSET, dim)
        self.embed_positions.B = nn.Embedding(max_text_positions, dim)
        # stochastic depth rising linearly from 0 (first layer) to drop_path (last), as np.linspace in torchscale
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.layers = nn.ModuleList([Beit3Layer(dim, heads, eps, rates[i]) for i in range(depth)])
        self.layer_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps))
