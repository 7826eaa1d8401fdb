"""YAML files, `--set` item parsing, validation of mappings into dataclasses, and preset lookup in `registry/`."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from risbench.errors import RisbenchError, UnknownNameError, unknown_name_message

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def registry_dir() -> Path:
    """The preset folder (`registry/` at the project root, or $RISBENCH_REGISTRY)."""
    return Path(os.environ.get("RISBENCH_REGISTRY", PROJECT_ROOT / "registry"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """yaml.safe_load a mapping from `path`, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise RisbenchError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise RisbenchError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RisbenchError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=3' -> (['a', 'b'], 3); the value is parsed with yaml.safe_load."""
    if "=" not in item:
        raise RisbenchError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RisbenchError(f"--set: bad key '{key}' in '{item}'")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


# PyYAML follows YAML 1.1, where "4e-4" (no dot) is a string, not a float; a float field accepts it.
EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _matches(value: Any, hint: Any) -> tuple[bool, Any]:
    """Check `value` against a type hint, coercing int->float and list->tuple. Returns (ok, value)."""
    if hint is Any:
        return True, value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, coerced = _matches(value, arg)
            if ok:
                return True, coerced
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is float:
        if isinstance(value, str) and EXPONENT_FLOAT.match(value):
            return True, float(value)
        return (isinstance(value, (int, float)) and not isinstance(value, bool)), (
            float(value) if isinstance(value, (int, float)) else value
        )
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(hint)
        item_hint = args[0] if args else Any
        items = []
        for v in value:
            ok, c = _matches(v, item_hint)
            if not ok:
                return False, value
            items.append(c)
        return True, (tuple(items) if origin is tuple else items)
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict), value
    return True, value


def to_dataclass(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    """Build dataclass `cls` from a dict; unknown keys and wrong types fail with `where` and the key."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise RisbenchError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise UnknownNameError(f"{where}: " + unknown_name_message("key", key, fields))
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[key] = to_dataclass(hint, value, f"{where}.{key}")
            continue
        ok, coerced = _matches(value, hint)
        if not ok:
            raise RisbenchError(f"{where}.{key}: expected {_hint_name(hint)}, got {value!r}")
        kwargs[key] = coerced
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RisbenchError(f"{where}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RisbenchError(f"{where}: {exc}") from None


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts/lists, ready for yaml.safe_dump."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def find_preset(kind: str, name_or_path: str | Path) -> Path:
    """Resolve a preset name (e.g. 'shared-ris-b' in registry/models/) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise RisbenchError(f"config file not found: {p}")
        return p
    folder = registry_dir() / kind
    candidate = folder / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(f.stem for f in folder.glob("*.yaml"))
    raise UnknownNameError(unknown_name_message(f"{kind[:-1]} preset", str(name_or_path), known))


def list_presets(kind: str) -> list[Path]:
    """Preset files of one kind (models, datasets, recipes)."""
    return sorted((registry_dir() / kind).glob("*.yaml"))
