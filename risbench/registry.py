"""A small name -> factory registry (fvcore's size, lm-eval's manners: duplicates are errors,
unknown names get "did you mean")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from risbench.errors import RisbenchError, UnknownNameError, unknown_name_message


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, factory, optional config dataclass and one-line summary."""

    name: str
    obj: Callable[..., Any]
    config: type | None = None

    @property
    def summary(self) -> str:
        doc = (self.obj.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry:
    """Maps names to factories for one kind of component (encoder, fpn, decoder, dataset, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, config: type | None = None) -> Callable[[Any], Any]:
        """Decorator: register a class or function under `name`, optionally with a config dataclass."""

        def decorator(obj: Any) -> Any:
            if name in self._entries:
                raise RisbenchError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, obj, config)
            return obj

        return decorator

    def get(self, name: str) -> Entry:
        """The entry for `name`; an unknown name raises with the known names and the closest match."""
        _load_builtin_components()
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries))
        return self._entries[name]

    def names(self) -> list[str]:
        _load_builtin_components()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        _load_builtin_components()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        _load_builtin_components()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def make_config(self, name: str, params: dict[str, Any], where: str) -> Any:
        """Validate `params` into the entry's config dataclass; unknown keys name the closest field."""
        from risbench.config import to_dataclass

        entry = self.get(name)
        if entry.config is None:
            if params:
                raise RisbenchError(f"{where}: {self.kind} '{name}' takes no options, got {sorted(params)}")
            return None
        return to_dataclass(entry.config, params, where)


ENCODERS = Registry("encoder")
FPNS = Registry("fpn")
DECODERS = Registry("decoder")
DATASETS = Registry("dataset")
LOSSES = Registry("loss")
METRICS = Registry("metric")
OBJECTIVES = Registry("pretraining objective")

REGISTRIES: dict[str, Registry] = {
    "encoders": ENCODERS,
    "fpns": FPNS,
    "decoders": DECODERS,
    "datasets": DATASETS,
    "losses": LOSSES,
    "metrics": METRICS,
    "objectives": OBJECTIVES,
}

_loaded = False


def _load_builtin_components() -> None:
    """Import the built-in component packages once, so their decorators run (lazily, on first lookup)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for module in ("risbench.models", "risbench.data", "risbench.train"):
        importlib.import_module(module)


def config_fields(config: type | None) -> list[str]:
    """Field names of a config dataclass (for `risbench list` and error messages)."""
    return [f.name for f in dataclasses.fields(config)] if config else []
