"""What every tower shares: building its adapters from the config list, and reading a local weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.registry import ADAPTERS


def build_adapters(specs: list[dict[str, Any]], dim: int, depth: int, context_dim: int, where: str) -> nn.ModuleDict:
    """{block index: adapter} from `[{name: ..., layers: [...], <options>}, ...]`; one adapter per block."""
    out = nn.ModuleDict()
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise RisbenchError(f"{where}.adapters[{i}]: expected a mapping with a 'name'")
        name = spec["name"]
        cfg = ADAPTERS.make_config(name, {k: v for k, v in spec.items() if k != "name"}, f"{where}.adapters[{i}]")
        cls = ADAPTERS.get(name).obj
        for layer in cfg.layers:
            if not 0 <= layer < depth:
                raise RisbenchError(f"{where}.adapters[{i}]: layer {layer} is not a block index in 0..{depth - 1}")
            if str(layer) in out:
                raise RisbenchError(f"{where}.adapters[{i}]: block {layer} already has an adapter")
            if cls.needs_context and not context_dim:
                raise RisbenchError(f"{where}.adapters[{i}]: adapter '{name}' needs a text context")
            out[str(layer)] = cls(cfg, dim, context_dim)
    return out


def read_state_dict(path: str | Path, where: str) -> dict[str, Tensor]:
    """Tensors of a local .pth/.pt/.bin (torch.load, weights_only) or .safetensors file; a {"state_dict"|"model":
    sd} wrapper is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise RisbenchError(f"{where}: weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):  # OpenAI CLIP's .pt: its tensors, none of its code
        from risbench.torchscript import load_torchscript_state_dict

        try:
            return load_torchscript_state_dict(path)
        except RisbenchError as exc:
            raise RisbenchError(f"{where}: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a TorchScript archive or a pickle with code in it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # torch's messages span many lines
        raise RisbenchError(f"{where}: cannot read {path} as a weights-only state dict: {first}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise RisbenchError(f"{where}: {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _is_torchscript(path: Path) -> bool:
    """A zip with a `<root>/code/` folder: an archive of torch.jit.save."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.count("/") >= 2 and name.split("/")[1] == "code" for name in archive.namelist())


def check_keys(converted: dict[str, Tensor], target: dict[str, Tensor], where: str, path: str) -> None:
    """Strict: every target key present with its shape, and no converted key left over (one-line error)."""
    missing = sorted(set(target) - set(converted))
    extra = sorted(set(converted) - set(target))
    bad = [k for k in converted if k in target and tuple(converted[k].shape) != tuple(target[k].shape)]
    if missing or extra or bad:
        shapes = [f"{k} {tuple(converted[k].shape)} vs {tuple(target[k].shape)}" for k in bad[:3]]
        raise RisbenchError(
            f"{where}: {path} does not fit: missing {missing[:4]}, unexpected {extra[:4]}, shape mismatches {shapes}"
        )
