"""Official DINOv2 checkpoints (facebookresearch/dinov2 `dinov2_vit{b,l}14_reg4_pretrain.pth`, DETRIS's
`dinov2.*` keys) -> transformers' Dinov2WithRegistersModel keys, with the position table resized to the grid."""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor

from risbench.errors import RisbenchError

# official name -> transformers name (inside one block: blocks.{i}.<a> -> encoder.layer.{i}.<b>)
_BLOCK = {
    "norm1": "norm1",
    "attn.proj": "attention.o_proj",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "ls2.gamma": "layer_scale2.lambda1",
}
_TOP = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def resize_pos_embed(pos: Tensor, grid: int, offset: float = 0.1) -> Tensor:
    """(1, 1 + M*M, D) -> (1, 1 + grid*grid, D): bicubic, no antialias, scale factor (grid + offset) / M,
    exactly DINOv2's `interpolate_pos_encoding` (which DETRIS runs on every forward; we run it once)."""
    n = pos.shape[1] - 1
    m = int(math.sqrt(n))
    if m < 1 or m * m != n:
        raise RisbenchError(f"dinov2: position table of {n} patches is not square")
    if m == grid:
        return pos
    patch = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    scale = (grid + offset) / m
    patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    if patch.shape[-2:] != (grid, grid):
        raise RisbenchError(f"dinov2: resizing the position table gave {tuple(patch.shape[-2:])}, not {grid}x{grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
    return torch.cat([pos[:, :1], patch], dim=1)


def convert_dinov2(sd: dict[str, Tensor], grid: int) -> dict[str, Tensor]:
    """Official DINOv2 keys (no prefix) -> transformers keys; the fused qkv is split; `pos_embed` resized.
    Unknown keys raise (the caller strips prefixes and takes the adapters out first)."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in _TOP:
            out[_TOP[key]] = resize_pos_embed(value, grid) if key == "pos_embed" else value
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", key)
        if m is None:
            raise RisbenchError(f"dinov2: unexpected checkpoint key '{key}'")
        i, name, kind = m.groups()
        prefix = f"encoder.layer.{i}."
        if name == "attn.qkv":
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.{part}.{kind}"] = chunk.contiguous()
            continue
        full = f"{name}.{kind}" if kind == "gamma" else name
        if full not in _BLOCK:
            raise RisbenchError(f"dinov2: unexpected checkpoint key '{key}'")
        out[prefix + _BLOCK[full] + ("" if kind == "gamma" else f".{kind}")] = value
    return out


def to_official_dinov2(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers Dinov2WithRegistersModel keys -> the official layout (the inverse of `convert_dinov2` at the
    tower's own grid): q/k/v fused into `attn.qkv`, layer scales as `ls{1,2}.gamma`. Unknown keys raise."""
    top = {v: k for k, v in _TOP.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+?)(?:\.(weight|bias))?", key)
        if m is None:
            raise RisbenchError(f"dinov2: unexpected tower key '{key}'")
        i, name, kind = m.groups()
        if name in ("attention.q_proj", "attention.k_proj", "attention.v_proj") and kind:
            qkv.setdefault((i, kind), {})[name[-6]] = value
        elif kind is None and name in block:  # a layer scale
            out[f"blocks.{i}.{block[name]}"] = value
        elif kind is not None and name in block:
            out[f"blocks.{i}.{block[name]}.{kind}"] = value
        else:
            raise RisbenchError(f"dinov2: unexpected tower key '{key}'")
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
