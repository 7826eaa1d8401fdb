"""An experiment's base run config with its presets resolved, and validation of run configs (no models built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from risbench.config import find_preset
from risbench.data.build import dataset_class_and_config, resolve_data_config
from risbench.errors import RisbenchError, UnknownNameError, unknown_name_message
from risbench.registry import DATASETS, config_fields
from risbench.spec import COMPONENT_REGISTRIES, SECTION_KEYS, full_key, load_config, merge, resolve_model, validate_spec
from risbench.train.config import resolve_run_config

RUN_SECTIONS = ("model", "data", "tokenizer", "train", "eval")
BASE_KEYS = (*RUN_SECTIONS, "recipe")


def _get(cfg: dict[str, Any], parts: list[str]) -> tuple[bool, Any]:
    node: Any = cfg
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _prefixed(exc: RisbenchError, where: str) -> RisbenchError:
    return type(exc)(f"{where}: {exc}")


def resolve_base(base: dict[str, Any], where: str, root: Path | None = None) -> dict[str, Any]:
    """The base run config with its presets resolved into plain mappings: `recipe` (registry/recipes/,
    its sections sit under the base's own), `model` (a complete spec) and `data` (the dataset options)."""
    unknown = [k for k in base if k not in BASE_KEYS]
    if unknown:
        raise UnknownNameError(f"{where}: " + unknown_name_message("key", unknown[0], BASE_KEYS))
    cfg: dict[str, Any] = load_recipe(base["recipe"], f"{where}.recipe", root) if base.get("recipe") is not None else {}
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


def load_recipe(recipe: Any, where: str, root: Path | None = None) -> dict[str, Any]:
    """A recipe preset (registry/recipes/, or a file beside the experiment) as its run-config sections."""
    if not isinstance(recipe, str):
        raise RisbenchError(f"{where}: expected a recipe preset name, got {recipe!r}")
    if root is not None and (root / recipe).is_file():
        recipe = str(root / recipe)
    try:
        cfg = load_config(find_preset("recipes", recipe))
    except RisbenchError as exc:
        raise _prefixed(exc, where) from None
    cfg.pop("description", None)
    return cfg


def _option_fields(cfg: dict[str, Any], parts: list[str]) -> list[str]:
    """Options a component or dataset accepts (its config dataclass fields), for keys not written out."""
    if len(parts) == 3 and parts[0] == "model" and parts[1] in SECTION_KEYS:
        reg = COMPONENT_REGISTRIES[parts[1]]
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
    config.yaml holds): the model spec (`risbench.spec.validate_spec`), the dataset's options, and the
    trainer's own sections through `risbench.train.config.resolve_run_config`."""
    validate_spec(cfg.get("model"), f"{where}.model")
    try:
        dataset_class_and_config(cfg.get("data"))
        _, resolved = resolve_run_config(cfg)
    except RisbenchError as exc:
        raise _prefixed(exc, where) from None
    return resolved
