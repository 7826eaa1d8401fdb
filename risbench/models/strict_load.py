"""Strict loading of converted checkpoint tensors into a module, with one line that says what does not fit
(the released DETRIS and RefSegformer checkpoints both load through it)."""

from __future__ import annotations

from torch import Tensor, nn

from risbench.errors import RisbenchError


def load_strict(module: nn.Module, converted: dict[str, Tensor], where: str) -> None:
    """Load `converted` into `module`: every key of ours filled with its shape and every converted key used;
    a one-line RisbenchError otherwise, naming `where` (e.g. "detris checkpoint <path>")."""
    target = module.state_dict()
    missing = sorted(set(target) - set(converted))
    extra = sorted(set(converted) - set(target))
    bad = [
        f"{k} {tuple(v.shape)} vs ours {tuple(target[k].shape)}"
        for k, v in converted.items()
        if k in target and v.shape != target[k].shape
    ]
    if missing or extra or bad:
        raise RisbenchError(
            f"{where} does not fit the model: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(extra)} unexpected (e.g. {extra[:2]}), {len(bad)} shape mismatches (e.g. {bad[:1]})"
        )
    module.load_state_dict(converted, strict=True)
