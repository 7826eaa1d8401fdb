"""Checkpoints (written atomically, so a run killed while saving keeps the previous one) and RNG state."""

from __future__ import annotations

import hashlib
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from risbench.errors import RisbenchError
from risbench.io import atomic_write_bytes

DIGEST_KEY = "digest"


def _digest(obj: Any) -> str:
    """sha256 of a checkpoint's content: every tensor's dtype, shape and bytes, and the repr of everything
    else, in order. A byte flipped inside a tensor's storage loads without error; this catches it."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k, v in x.items():
                h.update(repr(k).encode())
                walk(v)
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` to `path` atomically, with a digest of its content (checked by `load_checkpoint`)."""
    state = {**state, DIGEST_KEY: _digest(state)}
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint` (tensors, plain containers and numbers only). An empty,
    truncated or corrupted file, or one whose content no longer matches its digest, is a RisbenchError."""
    path = Path(path)
    fix = "delete it to retrain (or start over with --no-resume), or pass another checkpoint"
    if path.is_file() and path.stat().st_size == 0:
        raise RisbenchError(f"{path}: empty checkpoint file; {fix}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RisbenchError(
            f"{path}: not a risbench checkpoint that loads safely (weights_only); written by an older "
            f"version? Retrain, or start over with --no-resume ({str(exc).splitlines()[0]})"
        ) from None
    except FileNotFoundError:
        raise RisbenchError(f"{path}: no such checkpoint (has the run trained?)") from None
    except Exception as exc:  # torch's zip reader, pickle and decoding raise assorted types on corrupt files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:120]
        raise RisbenchError(f"{path}: not a readable checkpoint, truncated or corrupted ({reason}); {fix}") from None
    if not isinstance(state, dict):
        raise RisbenchError(f"{path}: not a risbench checkpoint (a {type(state).__name__}, not a dict); {fix}")
    digest = state.pop(DIGEST_KEY, None)
    if digest is not None and digest != _digest(state):
        raise RisbenchError(f"{path}: checkpoint content does not match its digest (corrupted on disk); {fix}")
    return state


def describe_model(spec: Any) -> str:
    """A model spec in a few words: 'beit3 tiny + fpn shared + decoder shared'."""
    if not isinstance(spec, dict):
        return "an unknown model"
    enc = spec.get("encoder") or {}
    parts = [" ".join(str(x) for x in (enc.get("name"), enc.get("size")) if x is not None) or "?"]
    parts += [f"{k} {(spec.get(k) or {}).get('name', '?')}" for k in ("fpn", "decoder")]
    return " + ".join(parts)


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
            if found:
                return found
        return None
    return None if a == b else f"{where} {a!r} vs {b!r}"


def load_model_state(model: torch.nn.Module, ckpt: dict[str, Any], path: Path, model_spec: Any) -> None:
    """Load a checkpoint's weights into `model` (built from `model_spec`); a checkpoint of another model is
    a RisbenchError naming both models (from the spec the checkpoint saved, when it has one)."""
    theirs = (ckpt.get("config") or {}).get("model") if isinstance(ckpt.get("config"), dict) else None
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, TypeError, ValueError):
        pass
    else:
        return
    ours = describe_model(model_spec)
    if theirs is not None:
        other = describe_model(theirs)
        if other == ours:
            other += f" ({_first_difference(theirs, model_spec) or 'other weights'})"
    else:
        other = "weights of another model (no config saved)"
    raise RisbenchError(f"{path} holds another model: {other}, but this run is {ours}; pass this run's checkpoint")


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop touches (python, numpy, torch CPU and CUDA), as tensors
    and plain python values so that the checkpoint loads with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
