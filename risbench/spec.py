"""Config trees and model specs: `include:` merging, `--set`, the rename rule, model presets, validation.

Every path that changes or checks a config goes through here: `merge` (one rule: a section that names a
new component replaces the old one), `set_key` (one `--set` item), `resolve_model_spec` (presets) and
`validate_spec` / `check_traits` (names, options and traits of a model spec).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from risbench.config import find_preset, parse_override, read_yaml
from risbench.errors import IncompatibleError, RisbenchError, UnknownNameError, unknown_name_message
from risbench.registry import DECODERS, ENCODERS, EXISTENCE_HEADS, FPNS, Registry

MODEL_KEYS = ("encoder", "fpn", "decoder")
# Components a model spec may add (absent or null: the model has none and behaves as without the key).
OPTIONAL_KEYS = ("existence",)
SECTION_KEYS = (*MODEL_KEYS, *OPTIONAL_KEYS)
# Keys a model preset may carry besides the three components (documentation only).
MODEL_INFO_KEYS = ("description", "paper")
COMPONENT_REGISTRIES: dict[str, Registry] = {
    "encoder": ENCODERS,
    "fpn": FPNS,
    "decoder": DECODERS,
    "existence": EXISTENCE_HEADS,
}


def replaces(old: Any, new: Any) -> bool:
    """The rename rule: a mapping `new` that names a different component (`name:`) than `old` replaces
    it instead of merging into it, because `old`'s options belong to the old component."""
    return isinstance(old, dict) and isinstance(new, dict) and "name" in new and old.get("name") != new["name"]


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `update` into a copy of `base`: dicts merge, everything else (lists too) replaces,
    and a section that `replaces` the old one (a new component name) drops the old one's options."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and not replaces(old, value):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML file, resolving `include:` (a path or list of paths, relative to the file) first."""
    path = Path(path).resolve()
    if path in _seen:
        raise RisbenchError(f"{path}: include cycle through {' -> '.join(str(p) for p in _seen)}")
    data = read_yaml(path)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, Any] = {}
    for inc in includes:
        inc_path = (path.parent / inc) if not Path(inc).is_absolute() else Path(inc)
        merged = merge(merged, load_config(inc_path, (*_seen, path)))
    return merge(merged, data)


def full_key(key: str) -> str:
    """'fpn.name' -> 'model.fpn.name' (in a run config, component shorthands live under `model`)."""
    return f"model.{key}" if key.split(".", 1)[0] in SECTION_KEYS else key


def set_key(cfg: dict[str, Any], key: str, value: Any, where: str) -> dict[str, Any]:
    """Apply one `--set key=value` to a copy of `cfg`: the one place a `--set` is applied. The top-level
    section must exist (a typo there fails here, with the closest name); deeper sections are created, and
    dataclass validation rejects unknown keys later. A new component `name` drops the section's old
    options (`replaces`)."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise RisbenchError(f"{where}: bad key '{key}'")
    if len(parts) > 1 and parts[0] not in cfg:
        raise UnknownNameError(f"{where}: " + unknown_name_message("key under the top level", parts[0], cfg))
    out = copy.deepcopy(cfg)
    node = out
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if len(parts) > 1 and parts[-1] == "name" and replaces(node, {"name": value}):
        node.clear()
    node[parts[-1]] = copy.deepcopy(value)
    return out


def apply_overrides(cfg: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `--set` items ('fpn.dim=64') to a copy of `cfg`, in order (see `set_key`)."""
    out = copy.deepcopy(cfg)
    for item in overrides or []:
        parts, value = parse_override(item)
        out = set_key(out, ".".join(parts), value, f"--set {item}")
    return out


def resolve_model_spec(
    preset_or_spec: str | Path | dict[str, Any], overrides: list[str] | None = None, **sections: Any
) -> dict[str, Any]:
    """A full model spec from a preset name (registry/models/), a YAML path or a dict, with section merges
    (fpn={'name': 'cris'}) and then `--set`-style overrides ('fpn.name=cris') applied."""
    if isinstance(preset_or_spec, dict):
        spec = copy.deepcopy(preset_or_spec)
    else:
        spec = load_config(find_preset("models", preset_or_spec))
    for key, value in sections.items():
        if key not in SECTION_KEYS:
            raise RisbenchError(f"build_model: unknown section '{key}'; expected one of {', '.join(SECTION_KEYS)}")
        spec = merge(spec, {key: value})
    for key in OPTIONAL_KEYS:  # `existence.name=pooled` on a spec without one adds the section
        if spec.get(key) is None and any(item.split(".", 1)[0] == key for item in overrides or []):
            spec[key] = {}
    return apply_overrides(spec, _renames_first(overrides or []))


def _renames_first(items: list[str]) -> list[str]:
    """`--set` items with component renames first, so that options set beside them land on the new one."""
    return sorted(items, key=lambda item: not item.split("=", 1)[0].endswith(".name"))


def resolve_model(model: Any) -> dict[str, Any]:
    """A run config's `model` (a preset name, a spec, or a mapping with `preset:` and sections to merge
    into it) as a complete model spec."""
    if isinstance(model, str):
        return resolve_model_spec(model)
    if not isinstance(model, dict):
        raise RisbenchError(f"model: expected a preset name or a mapping, got {model!r}")
    model = copy.deepcopy(model)
    preset = model.pop("preset", None)
    if preset is None:
        return resolve_model_spec(model)
    other = set(model) - set(SECTION_KEYS)
    if other:
        raise RisbenchError(f"model: unknown key(s) {sorted(other)} next to 'preset'")
    return resolve_model_spec(preset, **model)


def validate_spec(spec: Any, where: str = "model") -> dict[str, tuple[str, Any]]:
    """Check a model spec without building it: its keys, each component's name against the registries and
    its options against the component's config dataclass. Returns {part: (name, config dataclass)}; an
    optional part (`existence`) that is absent or null is left out."""
    if not isinstance(spec, dict):
        raise RisbenchError(f"{where}: expected a mapping")
    allowed = (*SECTION_KEYS, *MODEL_INFO_KEYS)
    for key in spec:
        if key not in allowed:
            raise UnknownNameError(f"{where}: " + unknown_name_message("key", key, allowed))
    parts = {}
    for part, reg in COMPONENT_REGISTRIES.items():
        section = spec.get(part)
        if part in OPTIONAL_KEYS and section is None:
            continue
        if not isinstance(section, dict) or "name" not in section:
            raise RisbenchError(f"{where}.{part}: expected a mapping with a 'name'")
        name = section["name"]
        if not isinstance(name, str) or name not in reg:
            raise UnknownNameError(f"{where}.{part}.name: " + unknown_name_message(reg.kind, str(name), reg.names()))
        params = {k: v for k, v in section.items() if k != "name"}
        parts[part] = (name, reg.make_config(name, params, f"{where}.{part}"))
    return parts


def check_traits(kind: str, name: str, needs: frozenset[str], other_kind: str, other: str, has: frozenset[str]) -> None:
    """Raise IncompatibleError, naming both sides, when `needs` is not a subset of what the other side `has`."""
    missing = set(needs) - set(has)
    if missing:
        raise IncompatibleError(
            f"incompatible components: {kind} '{name}' needs {', '.join(sorted(missing))} but "
            f"{other_kind} '{other}' provides {', '.join(sorted(has)) or 'nothing'}"
        )
