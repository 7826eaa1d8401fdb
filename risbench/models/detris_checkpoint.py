"""Released DETRIS checkpoints (jiaqihuang01/DETRIS@c94b1e1e train.py: {'state_dict': DDP model.state_dict(),
'epoch', 'optimizer', ...}) -> our detris-b / detris-l Segmenter, strictly and key by key."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.models.strict_load import load_strict
from risbench.models.towers.clip_convert import convert_openai_clip
from risbench.models.towers.dinov2_convert import convert_dinov2

# official keys that our model does not hold on purpose: CLIP's contrastive temperature (unused by DETRIS)
DROPPED = ("txt_backbone.logit_scale",)

# (official pattern, ours) inside one adapter / the neck / the decoder; MultiheadAttention's fused
# in-projection is split by `_split_in_proj`
_ADAPTER = [
    (r"dense_branch(\d)\.(conv|bn)\.", lambda m: f"dense.b{m[1]}.{'0' if m[2] == 'conv' else '1'}."),
    (r"dense_branch(\d)\.(\d)\.(conv|bn)\.", lambda m: f"dense.b{m[1]}.{m[2]}.{'0' if m[3] == 'conv' else '1'}."),
    (r"D_fc1\.", lambda m: "down."),
    (r"D_fc2\.", lambda m: "up."),
    (r"cross\.multihead_attn\.", lambda m: "cross.attn."),
    (r"cross\.", lambda m: "cross."),
]
_NECK = [
    (r"fusion(\d)\.multihead_attn\.", lambda m: f"fusion{m[1]}.attn."),
    (r"coordconv\.0\.conv1\.", lambda m: "coordconv.0.conv."),
    (r"", lambda m: ""),
]
_DECODER = [(r"layers\.(\d+)\.multihead_attn\.", lambda m: f"layers.{m[1]}.cross_attn."), (r"", lambda m: "")]


def _rename(key: str, rules, where: str) -> str:
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m:
            return repl(m) + key[m.end() :]
    raise RisbenchError(f"detris checkpoint: unexpected {where} key '{key}'")


def _split_in_proj(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """`<p>.in_proj_weight/bias` (nn.MultiheadAttention) -> `<p>.{q,k,v}_proj.weight/bias`."""
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"(.*)\.in_proj_(weight|bias)", key)
        if m is None:
            out[key] = value
            continue
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
            out[f"{m[1]}.{part}.{m[2]}"] = chunk.contiguous()
    return out


def read_detris_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The model tensors of a DETRIS .pth (weights-only; the `state_dict` wrapper and a `module.` prefix off)."""
    path = Path(path)
    if not path.is_file():
        raise RisbenchError(f"detris checkpoint: {path} does not exist")
    try:  # MultiStepLR's state holds a collections.Counter (its milestones): plain data, allowed here
        with torch.serialization.safe_globals([Counter]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RisbenchError(f"detris checkpoint: cannot read {path} weights-only: {exc}") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise RisbenchError(f"detris checkpoint: {path} holds no state dict")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}


def convert_detris(sd: dict[str, Tensor], grid: int) -> dict[str, Tensor]:
    """Official DETRIS keys (no `module.`) -> our Segmenter keys (encoder.vision / encoder.text / fpn / decoder)."""
    groups: dict[str, dict[str, Tensor]] = {"dino": {}, "clip": {}}
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in DROPPED:
            continue
        if m := re.fullmatch(r"dinov2\.blocks\.(\d+)\.adapter\.(.+)", key):
            out[f"encoder.vision.adapters.{m[1]}." + _rename(m[2], _ADAPTER, "adapter")] = value
        elif m := re.fullmatch(r"txt_backbone\.transformer\.resblocks\.(\d+)\.adapter\.(.+)", key):
            out[f"encoder.text.adapters.{m[1]}." + _rename(m[2], _ADAPTER, "adapter")] = value
        elif key.startswith("dinov2."):
            groups["dino"][key[len("dinov2.") :]] = value
        elif key.startswith("txt_backbone."):
            groups["clip"][key[len("txt_backbone.") :]] = value
        elif key.startswith("neck."):
            out["fpn." + _rename(key[len("neck.") :], _NECK, "neck")] = value
        elif key.startswith("decoder."):
            out["decoder.transformer." + _rename(key[len("decoder.") :], _DECODER, "decoder")] = value
        elif key.startswith("proj."):
            out["decoder.projector." + key[len("proj.") :]] = value
        else:
            raise RisbenchError(f"detris checkpoint: unexpected key '{key}'")
    out.update({f"encoder.vision.model.{k}": v for k, v in convert_dinov2(groups["dino"], grid).items()})
    out.update({f"encoder.text.{k}": v for k, v in convert_openai_clip(groups["clip"]).items()})
    return _split_in_proj(out)


def load_detris_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a released DETRIS checkpoint into `model` (a detris-b / detris-l Segmenter), strictly: every key of
    ours filled with its shape and every official key used (bar DROPPED); a one-line RisbenchError otherwise."""
    converted = convert_detris(read_detris_checkpoint(path), model.encoder.vision.grid)
    load_strict(model, converted, f"detris checkpoint {path}")
