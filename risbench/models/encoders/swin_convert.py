"""Official Microsoft Swin checkpoints (.pth) -> the `transformers` SwinModel inside `swin_bert`.

The checkpoints LAVT, CGFormer and DMMI start from (e.g. `swin_base_patch4_window12_384_22k.pth`) hold
`{"model": state_dict}` in the original Swin-Transformer layout:

    patch_embed.proj.*, patch_embed.norm.*, [absolute_pos_embed]
    layers.{i}.blocks.{j}.norm1.*, .attn.qkv.*, .attn.proj.*, .attn.relative_position_bias_table,
        .attn.relative_position_index, .norm2.*, .mlp.fc1.*, .mlp.fc2.*, [.attn_mask]
    layers.{i}.downsample.reduction.weight, layers.{i}.downsample.norm.*     (end of stage i)
    norm.*, head.*

`transformers` keeps the patch merging at the end of stage i too (`encoder.layers.{i}.downsample`, the
same 2x2 concatenation order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]), so stages map
index for index. What changes: the fused `qkv` projection is split into three (rows [0:C] are the
query, [C:2C] the key, [2C:3C] the value), the module names differ, and two names exist depending on the
`transformers` major version; the converter reads the names off the target model, so either works:

    original           transformers >= 5                                   transformers 4.x
    attn.qkv           attention.{q,k,v}_proj                              attention.self.{query,key,value}
    attn.proj          attention.o_proj                                    attention.output.dense
    attn.rel..._table  attention.relative_position_bias.relative_..._table attention.self.relative_..._table
    norm1 / norm2      layernorm_before / layernorm_after
    mlp.fc1 / fc2      mlp.fc1 / mlp.fc2                                   intermediate.dense / output.dense

A relative-position table made for another window (7 for the ImageNet-1k 224 models, 12 for the
384 ones) is resized bicubically per head, (2w-1)^2 x heads -> (2w'-1)^2 x heads, as LAVT's loader
(`lib/mmcv_custom/checkpoint.py`) does. Derived buffers (`relative_position_index`, `attn_mask`) are
recomputed by the model; `head.*` (the classifier), the final `norm.*` and a SimMIM export's pretraining
heads (`mask_token`, `decoder.*`, see swin_bert_pretrain.py) are reported as ignored:
LAVT's backbone has no final norm, it has one fresh LayerNorm per output stage (`norm0`..`norm3`);
a checkpoint that carries those (`norm{k}.*`) fills our per-stage `out_norms.{k}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from risbench.errors import RisbenchError

# block-level renames: original suffix -> candidate target suffixes (first one present in the model wins)
_BLOCK_RENAMES: dict[str, tuple[str, ...]] = {
    "norm1": ("layernorm_before",),
    "norm2": ("layernorm_after",),
    "attn.proj": ("attention.o_proj", "attention.output.dense"),
    "mlp.fc1": ("mlp.fc1", "intermediate.dense"),
    "mlp.fc2": ("mlp.fc2", "output.dense"),
}
_QKV_TARGETS: tuple[tuple[str, str, str], ...] = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ("attention.self.query", "attention.self.key", "attention.self.value"),
)
_TABLE_TARGETS = (
    "attention.relative_position_bias.relative_position_bias_table",
    "attention.self.relative_position_bias_table",
)
# buffers the model derives from its own window size; never loaded
_DERIVED = re.compile(r"(relative_position_index|attn_mask)$")
# the classifier, the final norm, and SimMIM's pretraining heads (its `mask_token` and `decoder.*`)
_IGNORED = re.compile(r"^(head\.|norm\.|mask_token$|decoder\.)")

_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
_TABLE = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$")
_DOWN = re.compile(r"^layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$")
_OUT_NORM = re.compile(r"^norm(\d+)\.(weight|bias)$")


@dataclass
class SwinLoadReport:
    """What happened to each checkpoint key: loaded (target names), resized, ignored, unplaced."""

    path: str
    loaded: list[str] = field(default_factory=list)  # target keys filled
    resized: list[str] = field(default_factory=list)  # source tables resized to the model's window
    ignored: list[str] = field(default_factory=list)  # head / final norm / derived buffers
    unplaced: list[str] = field(default_factory=list)  # source keys with no place in the model
    left_at_init: list[str] = field(default_factory=list)  # target keys allowed to stay at init

    def summary(self) -> str:
        return (
            f"swin weights {self.path}: {len(self.loaded)} tensors loaded, {len(self.resized)} position tables "
            f"resized, ignored {_short(self.ignored)}, unplaced {_short(self.unplaced)}, "
            f"left at init {_short(self.left_at_init)}"
        )


def _short(keys: list[str], n: int = 6) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + "]" + more


def read_swin_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict of an official Swin .pth ({"model": sd}, {"state_dict": sd} or sd), tensors only."""
    path = Path(path)
    if not path.is_file():
        raise RisbenchError(f"encoder swin_bert: swin_weights file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files: one line naming the file
        raise RisbenchError(
            f"encoder swin_bert: cannot read {path} with torch.load(weights_only=True): {exc}"
        ) from None
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not ckpt:
        raise RisbenchError(f"encoder swin_bert: {path} holds no state dict")
    sd = {k: v for k, v in ckpt.items() if isinstance(v, Tensor)}
    # DDP / detection-style prefixes
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def resize_position_table(table: Tensor, window: int) -> Tensor:
    """(2w-1)^2 x heads -> (2*window-1)^2 x heads, bicubic per head (LAVT / Swin-Seg's loader)."""
    length, heads = table.shape
    side = round(length**0.5)
    if side * side != length:
        raise RisbenchError(f"encoder swin_bert: relative position table of {length} rows is not square")
    new_side = 2 * window - 1
    if side == new_side:
        return table
    grid = table.t().reshape(1, heads, side, side).float()
    out = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return out.reshape(heads, new_side * new_side).t().to(table.dtype).contiguous()


def _pick(candidates: tuple[str, ...], prefix: str, suffix: str, target: dict[str, Tensor]) -> str | None:
    for cand in candidates:
        name = f"{prefix}{cand}{suffix}"
        if name in target:
            return name
    return None


def convert_swin_state_dict(
    source: dict[str, Tensor],
    target: dict[str, Tensor],
    window_size: int,
    swin_prefix: str = "swin.",
    out_norm_prefix: str = "out_norms.",
    path: str = "<state dict>",
) -> tuple[dict[str, Tensor], SwinLoadReport]:
    """Map an official Swin state dict onto `target` (the encoder's own state dict, for names/shapes).

    Returns (converted state dict, report). Missing target tensors of the Swin body and shape mismatches
    raise a RisbenchError naming them (with the unplaced source keys, the usual cause)."""
    report = SwinLoadReport(path=path)
    out: dict[str, Tensor] = {}
    shape_errors: list[str] = []

    def put(name: str | None, value: Tensor, src: str) -> None:
        if name is None:
            report.unplaced.append(src)
            return
        if tuple(target[name].shape) != tuple(value.shape):
            shape_errors.append(f"{src} {tuple(value.shape)} -> {name} {tuple(target[name].shape)}")
            return
        out[name] = value

    sp = swin_prefix
    for key, value in source.items():
        if _DERIVED.search(key) or _IGNORED.match(key):
            report.ignored.append(key)
            continue
        if key.startswith("patch_embed.proj."):
            put(_pick(("embeddings.patch_embeddings.projection.",), sp, key.rsplit(".", 1)[1], target), value, key)
        elif key.startswith("patch_embed.norm."):
            put(_pick(("embeddings.norm.",), sp, key.rsplit(".", 1)[1], target), value, key)
        elif key == "absolute_pos_embed":
            put(_pick(("embeddings.position_embeddings",), sp, "", target), value.reshape(1, -1, value.shape[-1]), key)
        elif m := _TABLE.match(key):
            i, j = m.group(1), m.group(2)
            name = _pick(_TABLE_TARGETS, f"{sp}encoder.layers.{i}.blocks.{j}.", "", target)
            resized = resize_position_table(value, window_size)
            if resized.shape != value.shape:
                report.resized.append(key)
            put(name, resized, key)
        elif m := _BLOCK.match(key):
            i, j, inner, kind = m.groups()
            prefix = f"{sp}encoder.layers.{i}.blocks.{j}."
            if inner == "attn.qkv":
                names = None
                for triple in _QKV_TARGETS:
                    cand = [f"{prefix}{t}.{kind}" for t in triple]
                    if all(c in target for c in cand):
                        names = cand
                        break
                if names is None or value.shape[0] % 3:
                    report.unplaced.append(key)
                    continue
                for name, part in zip(names, value.chunk(3, dim=0), strict=True):
                    put(name, part.contiguous(), key)
            elif inner in _BLOCK_RENAMES:
                put(_pick(_BLOCK_RENAMES[inner], prefix, f".{kind}", target), value, key)
            else:
                report.unplaced.append(key)
        elif m := _DOWN.match(key):
            i, part, kind = m.groups()
            put(_pick((f"encoder.layers.{i}.downsample.{part}.",), sp, kind, target), value, key)
        elif m := _OUT_NORM.match(key):
            put(_pick((f"{m.group(1)}.",), out_norm_prefix, m.group(2), target), value, key)
        else:
            report.unplaced.append(key)

    swin_targets = [k for k in target if k.startswith(sp) and not _DERIVED.search(k)]
    allowed = [k for k in swin_targets if ".position_embeddings" in k or ".mask_token" in k]
    missing = [k for k in swin_targets if k not in out and k not in allowed]
    if shape_errors or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} model tensor(s): {_short(missing, 8)}")
        if shape_errors:
            parts.append(f"shape mismatch: {_short(shape_errors, 4)}")
        if report.unplaced:
            parts.append(f"unplaced checkpoint key(s): {_short(report.unplaced, 8)}")
        raise RisbenchError(f"encoder swin_bert: {path} does not fit Swin ({'; '.join(parts)})")
    report.loaded = sorted(out)
    report.left_at_init = [k for k in allowed if k not in out] + [
        k for k in target if k.startswith(out_norm_prefix) and k not in out
    ]
    return out, report


def to_official_swin_state_dict(
    state: dict[str, Tensor], swin_prefix: str = "swin.", out_norm_prefix: str = "out_norms."
) -> dict[str, Tensor]:
    """The reverse of `convert_swin_state_dict`: an encoder's state dict (transformers names under
    `swin_prefix`, per-stage norms under `out_norm_prefix`) in the official Swin layout, q/k/v fused back
    into `attn.qkv` (rows q, k, v) and `out_norms.{k}` as LAVT's `norm{k}`. Derived buffers are left out;
    a key with no official name is an error. Loading the result with `convert_swin_state_dict` gives back
    every tensor exactly."""
    block = {v: k for k, vs in _BLOCK_RENAMES.items() for v in vs}
    tables = {t: "attn.relative_position_bias_table" for t in _TABLE_TARGETS}
    qkv = {name: (triple, i) for triple in _QKV_TARGETS for i, name in enumerate(triple)}
    out: dict[str, Tensor] = {}
    parts: dict[str, list[Tensor | None]] = {}
    for key, value in state.items():
        value = value.detach().cpu().clone()
        if key.startswith(out_norm_prefix):
            out["norm" + key[len(out_norm_prefix) :]] = value
            continue
        if not key.startswith(swin_prefix) or _DERIVED.search(key):
            continue
        rest = key[len(swin_prefix) :]
        if rest.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + rest.rsplit(".", 1)[1]] = value
        elif rest.startswith("embeddings.norm."):
            out["patch_embed.norm." + rest.rsplit(".", 1)[1]] = value
        elif rest == "embeddings.position_embeddings":
            out["absolute_pos_embed"] = value
        elif m := re.match(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$", rest):
            i, j, inner = m.groups()
            prefix = f"layers.{i}.blocks.{j}."
            name, _, kind = inner.rpartition(".")
            if inner in tables:
                out[prefix + tables[inner]] = value
            elif name in qkv:
                triple, idx = qkv[name]
                parts.setdefault(f"{prefix}attn.qkv.{kind}", [None, None, None])[idx] = value
            elif name in block:
                out[f"{prefix}{block[name]}.{kind}"] = value
            else:
                raise RisbenchError(f"encoder swin_bert: {key} has no official Swin name")
        elif m := re.match(r"^encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$", rest):
            out[f"layers.{m.group(1)}.downsample.{m.group(2)}.{m.group(3)}"] = value
        elif rest.startswith("embeddings.mask_token"):
            out["mask_token"] = value
        else:
            raise RisbenchError(f"encoder swin_bert: {key} has no official Swin name")
    for name, chunks in parts.items():
        if any(c is None for c in chunks):
            raise RisbenchError(f"encoder swin_bert: {name}: query, key and value are not all in the state dict")
        out[name] = torch.cat(chunks, dim=0)  # type: ignore[arg-type]
    return out
