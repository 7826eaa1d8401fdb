"""Run configs for the runner: dotted keys (`fpn.name` is `model.fpn.name`), base presets resolved,
and validation of a run config against the registries and the trainer's schema, without building models."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from risbench.config import find_preset, load_config, merge
from risbench.errors import RisbenchError, UnknownNameError, unknown_name_message

MODEL_KEYS = ("encoder", "fpn", "decoder")
RUN_SECTIONS = ("model", "data", "tokenizer", "train", "eval")
BASE_KEYS = (*RUN_SECTIONS, "recipe")


def full_key(key: str) -> str:
    """'fpn.name' -> 'model.fpn.name' (component shorthands live under `model`)."""
    return f"model.{key}" if key.split(".", 1)[0] in MODEL_KEYS else key


def _get(cfg: dict[str, Any], parts: list[str]) -> tuple[bool, Any]:
    node: Any = cfg
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def set_key(cfg: dict[str, Any], key: str, value: Any, where: str) -> dict[str, Any]:
    """Set dotted `key` to `value` in a copy of `cfg`. The parent section must exist; a component `name`
    that changes drops the old component's options."""
    out = copy.deepcopy(cfg)
    parts = full_key(key).split(".")
    if any(not p for p in parts):
        raise RisbenchError(f"{where}: bad key '{key}'")
    node = out
    for depth, part in enumerate(parts[:-1]):
        if part not in node:
            parent = ".".join(parts[:depth]) or "the top level"
            raise UnknownNameError(f"{where}: " + unknown_name_message(f"key under {parent}", part, node))
        if not isinstance(node[part], dict):
            raise RisbenchError(f"{where}: '{'.'.join(parts[: depth + 1])}' is not a section (key '{key}')")
        node = node[part]
    leaf = parts[-1]
    if len(parts) == 3 and parts[0] == "model" and parts[1] in MODEL_KEYS and leaf == "name":
        if node.get("name") != value:
            node.clear()
    node[leaf] = copy.deepcopy(value)
    return out


def _prefixed(exc: RisbenchError, where: str) -> RisbenchError:
    return type(exc)(f"{where}: {exc}")


def resolve_base(base: dict[str, Any], where: str, root: Path | None = None) -> dict[str, Any]:
    """The base run config with its presets resolved into plain mappings: `recipe` (registry/recipes/,
    its sections sit under the base's own), `model` (a complete spec) and `data` (the dataset options)."""
    from risbench.data.build import resolve_data_config
    from risbench.train.config import resolve_model

    unknown = [k for k in base if k not in BASE_KEYS]
    if unknown:
        raise UnknownNameError(f"{where}: " + unknown_name_message("key", unknown[0], BASE_KEYS))
    cfg: dict[str, Any] = {}
    if base.get("recipe") is not None:
        recipe = base["recipe"]
        if not isinstance(recipe, str):
            raise RisbenchError(f"{where}.recipe: expected a recipe preset name, got {recipe!r}")
        if root is not None and (root / recipe).is_file():
            recipe = str(root / recipe)
        try:
            cfg = load_config(find_preset("recipes", recipe))
        except RisbenchError as exc:
            raise _prefixed(exc, f"{where}.recipe") from None
        cfg.pop("description", None)
    for section in RUN_SECTIONS:
        if section not in base:
            continue
        value = base[section]
        try:
            if section == "model":
                cfg["model"] = resolve_model(value)
            elif section == "data":
                cfg["data"] = resolve_data_config(value)
            elif not isinstance(value, dict):
                raise RisbenchError(f"expected a mapping, got {value!r}")
            else:
                cfg[section] = merge(cfg.get(section) or {}, value)
        except RisbenchError as exc:
            raise _prefixed(exc, f"{where}.{section}") from None
    for key in ("model", "data"):
        if key not in cfg:
            raise RisbenchError(f"{where}: missing required key {key}")
    for section in ("tokenizer", "train", "eval"):
        cfg.setdefault(section, {})
    return cfg


def _option_fields(cfg: dict[str, Any], parts: list[str]) -> list[str]:
    """Options a component or dataset accepts (its config dataclass fields), for keys not written out."""
    from risbench.registry import DATASETS, DECODERS, ENCODERS, FPNS, config_fields

    if len(parts) == 3 and parts[0] == "model" and parts[1] in MODEL_KEYS:
        reg = {"encoder": ENCODERS, "fpn": FPNS, "decoder": DECODERS}[parts[1]]
        name = (cfg.get("model", {}).get(parts[1]) or {}).get("name")
    elif len(parts) == 2 and parts[0] == "data":
        reg, name = DATASETS, (cfg.get("data") or {}).get("name")
    else:
        return []
    if not isinstance(name, str) or name not in reg:
        return []
    return ["name", *config_fields(reg.get(name).config)]


def key_exists(cfg: dict[str, Any], resolved: dict[str, Any], key: str) -> bool:
    """A dotted key exists in a run config (as written, or with the trainer's defaults filled in), or is
    an option of the component or dataset it names."""
    parts = full_key(key).split(".")
    return _get(cfg, parts)[0] or _get(resolved, parts)[0] or parts[-1] in _option_fields(cfg, parts)


def validate_run_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate a run config without building anything big and return its resolved form (what
    config.yaml holds): component names and options against the registries, the dataset's options,
    and the trainer's own sections through `risbench.train.config.resolve_run_config`."""
    from risbench.data.build import dataset_class_and_config
    from risbench.registry import DECODERS, ENCODERS, FPNS
    from risbench.train.config import resolve_run_config

    model = cfg.get("model")
    if not isinstance(model, dict):
        raise RisbenchError(f"{where}.model: expected a mapping")
    allowed = {*MODEL_KEYS, "description", "paper"}
    for key in model:
        if key not in allowed:
            raise UnknownNameError(f"{where}.model: " + unknown_name_message("key", key, sorted(allowed)))
    for comp, reg in (("encoder", ENCODERS), ("fpn", FPNS), ("decoder", DECODERS)):
        section = model.get(comp)
        if not isinstance(section, dict) or "name" not in section:
            raise RisbenchError(f"{where}.model.{comp}: expected a mapping with a 'name'")
        name = section["name"]
        if not isinstance(name, str) or name not in reg:
            raise UnknownNameError(
                f"{where}.model.{comp}.name: " + unknown_name_message(reg.kind, str(name), reg.names())
            )
        params = {k: v for k, v in section.items() if k != "name"}
        reg.make_config(name, params, f"{where}.model.{comp}")
    try:
        dataset_class_and_config(cfg.get("data"))
        _, resolved = resolve_run_config(cfg)
    except RisbenchError as exc:
        raise _prefixed(exc, where) from None
    return resolved
