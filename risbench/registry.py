"""A small name -> factory registry (fvcore's size, lm-eval's manners: duplicates are errors,
unknown names get "did you mean")."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from risbench.config import to_dataclass
from risbench.errors import RisbenchError, UnknownNameError, unknown_name_message


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, factory, optional config dataclass and one-line summary."""

    name: str
    obj: Callable[..., Any]
    config: type | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # what else it declares (e.g. table columns)

    @property
    def summary(self) -> str:
        doc = (self.obj.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry:
    """Maps names to factories for one kind of component (encoder, fpn, decoder, dataset, ...).

    `builtins` names the package (or module) that holds the built-in components of this kind. It is
    imported on the first lookup, so that its `@register` decorators have run; the registry itself imports
    nothing above it, and a lookup in FPNS loads the FPNs, not the trainer."""

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self.builtins = builtins
        self._entries: dict[str, Entry] = {}
        self._loaded = builtins is None

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # first, so that the package's own registrations do not recurse
            try:
                importlib.import_module(self.builtins)
            except BaseException:
                self._loaded = False  # a broken component module fails every lookup, not only the first
                raise

    def register(self, name: str, *, config: type | None = None, **meta: Any) -> Callable[[Any], Any]:
        """Decorator: register a class or function under `name`, optionally with a config dataclass and
        metadata (`meta`: e.g. a metric's table columns, their labels and which way is better)."""

        def decorator(obj: Any) -> Any:
            if name in self._entries:
                raise RisbenchError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, obj, config, dict(meta))
            return obj

        return decorator

    def get(self, name: str) -> Entry:
        """The entry for `name`; an unknown name raises with the known names and the closest match."""
        self._load_builtins()
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries))
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        self._load_builtins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def make_config(self, name: str, params: dict[str, Any], where: str) -> Any:
        """Validate `params` into the entry's config dataclass; unknown keys name the closest field."""
        entry = self.get(name)
        if entry.config is None:
            if params:
                raise RisbenchError(f"{where}: {self.kind} '{name}' takes no options, got {sorted(params)}")
            return None
        config = to_dataclass(entry.config, params, where)
        check_sizes(config, where)
        return config


def is_size_field(name: str) -> bool:
    """A component option that is a width, a count of heads or a size in pixels/tokens (must be >= 1)."""
    return name in ("dim", "depth", "num_heads", "num_tokens") or name.endswith(("_dim", "_size"))


def check_sizes(config: Any, where: str) -> None:
    """Every integer size option of a (nested) config dataclass is >= 1: `fpn.dim=-5` fails here, with the
    key, instead of deep inside torch when the model is built."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_sizes(value, f"{where}.{f.name}")
        elif is_size_field(f.name) and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise RisbenchError(f"{where}.{f.name} must be >= 1 (a width, count or size), got {value}")


ENCODERS = Registry("encoder", "risbench.models.encoders")
FPNS = Registry("fpn", "risbench.models.fpn")
DECODERS = Registry("decoder", "risbench.models.decoders")
EXISTENCE_HEADS = Registry("existence head", "risbench.models.existence")
DATASETS = Registry("dataset", "risbench.data")
LOSSES = Registry("loss", "risbench.train.losses")
METRICS = Registry("metric", "risbench.train.metrics")
OBJECTIVES = Registry("pretraining objective", "risbench.models.encoders")
VISION_TOWERS = Registry("vision tower", "risbench.models.towers")
TEXT_TOWERS = Registry("text tower", "risbench.models.towers")
ADAPTERS = Registry("adapter", "risbench.models.adapters")
STAGE_FUSIONS = Registry("stage fusion", "risbench.models.stage_fusion")

REGISTRIES: dict[str, Registry] = {
    "encoders": ENCODERS,
    "fpns": FPNS,
    "decoders": DECODERS,
    "existence_heads": EXISTENCE_HEADS,
    "datasets": DATASETS,
    "losses": LOSSES,
    "metrics": METRICS,
    "objectives": OBJECTIVES,
    "vision_towers": VISION_TOWERS,
    "text_towers": TEXT_TOWERS,
    "adapters": ADAPTERS,
    "stage_fusions": STAGE_FUSIONS,
}


def config_fields(config: type | None) -> list[str]:
    """Field names of a config dataclass (for `risbench list` and error messages)."""
    return [f.name for f in dataclasses.fields(config)] if config else []
