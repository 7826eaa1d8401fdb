"""What `risbench eval` / `predict` evaluate: a run folder, or a run config with a checkpoint file (a released
model); and which weights file layout that checkpoint is in.

Layouts recognised by `load_model_weights`:
- risbench's own (`{"model": state_dict, ...}`, train/checkpoint.py), strictly;
- DETRIS's released `.pth` (jiaqihuang01/DETRIS: `{"state_dict": {"module.dinov2.*", "module.txt_backbone.*",
  "module.neck.*", ...}}`), converted key by key (risbench.models.detris_checkpoint);
- RefSegformer's released `ckpt.pth` (jianzongwu/robust-ref-seg: `{"model": {"text_encoder.*", "image_encoder.*",
  "segmentation.*"}, ...}`), converted key by key (risbench.models.refsegformer_checkpoint).
A file that fits neither, or does not fit the model, is one RisbenchError line.

OpenAI's `ViT-B-16.pt` is a TorchScript archive, not a state dict: the CLIP text tower reads its tensors
with `risbench.torchscript.load_torchscript_state_dict` (`encoder.text.clip_state_dict`), never its code.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from risbench.errors import RisbenchError
from risbench.spec import load_config
from risbench.train.config import apply_run_overrides, resolve_run_config

DETRIS_PREFIXES = ("dinov2.", "txt_backbone.", "neck.", "decoder.", "proj.")
REFSEGFORMER_PREFIXES = ("text_encoder.", "image_encoder.", "segmentation.")


def read_target(target: str | Path, overrides: list[str] | None = None) -> tuple[Path, dict[str, Any], bool]:
    """(folder the evaluations are written to, the resolved run config, whether `target` is a run folder).

    A run folder: its config.yaml as it is (`overrides` refused: they would change the run). A run config
    YAML: resolved with `overrides`, written under its `run_dir` (default runs/<stem>)."""
    target = Path(target)
    if target.is_dir():
        if overrides:
            raise RisbenchError(f"{target}: --set changes a run config, not a trained run; give a config file")
        if not (target / "config.yaml").exists():
            raise RisbenchError(f"{target}: not a run directory (no config.yaml)")
        return target, yaml.safe_load((target / "config.yaml").read_text()), True
    if target.suffix not in (".yaml", ".yml") or not target.is_file():
        raise RisbenchError(f"{target}: neither a run directory nor a run config file (.yaml)")
    raw = apply_run_overrides(load_config(target), overrides)
    _, resolved = resolve_run_config(raw)
    return Path(resolved.get("run_dir") or Path("runs") / target.stem), resolved, False


def read_weights(path: Path) -> Any:
    """The object a weights file holds, read weights-only (a released file's plain extras allowed)."""
    if not path.is_file():
        raise RisbenchError(f"{path}: no such checkpoint")
    try:  # a released DETRIS file holds its MultiStepLR state: a collections.Counter (plain data)
        with torch.serialization.safe_globals([Counter]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RisbenchError(f"{path}: cannot read as a weights-only checkpoint ({first})") from None


def checkpoint_layout(obj: Any) -> str:
    """'risbench', 'detris', 'refsegformer' or 'unknown' for the object a checkpoint file holds."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        keys = [k[len("module.") :] if str(k).startswith("module.") else str(k) for k in obj["model"]]
        if any(k.startswith("segmentation.") for k in keys) and all(k.startswith(REFSEGFORMER_PREFIXES) for k in keys):
            return "refsegformer"
        return "risbench"
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if isinstance(sd, dict) and sd:
        keys = [k[len("module.") :] if str(k).startswith("module.") else str(k) for k in sd]
        if any(k.startswith("dinov2.") for k in keys) and all(k.startswith(DETRIS_PREFIXES) for k in keys):
            return "detris"
    return "unknown"


def load_model_weights(model: nn.Module, path: str | Path) -> str:
    """Load `path` into `model` (on the CPU; tensors are copied to the model's device) in whichever layout it
    is; returns the layout. Strict: a missing, unexpected or mis-shaped tensor is one RisbenchError line."""
    path = Path(path)
    obj = read_weights(path)
    layout = checkpoint_layout(obj)
    if layout == "risbench":
        target = model.state_dict()
        sd = obj["model"]
        missing, extra = sorted(set(target) - set(sd)), sorted(set(sd) - set(target))
        bad = [k for k in sd if k in target and tuple(sd[k].shape) != tuple(target[k].shape)]
        if missing or extra or bad:
            raise RisbenchError(
                f"{path} does not fit the model: {len(missing)} missing (e.g. {missing[:2]}), {len(extra)} "
                f"unexpected (e.g. {extra[:2]}), {len(bad)} shape mismatches (e.g. {bad[:1]})"
            )
        model.load_state_dict(sd)
    elif layout == "detris":
        from risbench.models.detris_checkpoint import load_detris_checkpoint

        if not hasattr(getattr(model, "encoder", None), "vision"):
            raise RisbenchError(f"{path} is a DETRIS checkpoint; the model is not a dual-encoder DETRIS")
        try:
            load_detris_checkpoint(model, path)
        except (RuntimeError, ValueError, IndexError) as exc:  # a tensor the conversion cannot reshape
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RisbenchError(f"detris checkpoint {path} does not fit the model ({first})") from None
    elif layout == "refsegformer":
        from risbench.models.refsegformer_checkpoint import load_refsegformer_checkpoint

        try:
            load_refsegformer_checkpoint(model, path)
        except (RuntimeError, ValueError, IndexError) as exc:  # a tensor the conversion cannot reshape
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RisbenchError(f"refsegformer checkpoint {path} does not fit the model ({first})") from None
    else:
        raise RisbenchError(
            f"{path}: neither a risbench checkpoint ({{'model': ...}}) nor a released layout it knows "
            "(DETRIS, RefSegformer)"
        )
    return layout
