"""The pretraining config (`risbench pretrain CONFIG`): which encoder, on which data, with which objective
and recipe; validated into `PretrainConfig`, resolved into a plain dict, and hashed (the cache key)."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from risbench.config import find_preset, to_dataclass, to_dict
from risbench.errors import IncompatibleError, RisbenchError
from risbench.registry import ENCODERS, OBJECTIVES
from risbench.spec import load_config, resolve_model
from risbench.train.config import SCHEDULES, TokenizerConfig, comparable, resolve_data
from risbench.train.precision import AMP_MODES

# keys that do not change what pretraining computes (left out of the hash)
VOLATILE = (("description",), ("train", "log_every"), ("train", "threads"), ("train", "num_workers"))
# objective options added after artifacts were made, left out of the hash at the value that reproduces those
# artifacts (so that their cache keys stay valid): objective name -> {option: that value}
LATER_OPTION_DEFAULTS = {
    "beit3_mdm": {
        "norm_target": True,
        "mim_target": "pixels",
        "contrastive_weight": 0.0,
        "init_temperature": 0.07,
        "itm_weight": 0.0,
        "itm_swap": "shape",
        "itm_readout": "cls",
        "itc_negatives": "",
        "bow_weight": 0.0,
        "bow_pool": "cls",
        "tag_weight": 0.0,
        "tag_classes": [],
    }
}


@dataclass
class ObjectiveConfig:
    """`objective`: an OBJECTIVES name (null = the encoder family's own) and its options."""

    name: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class PretrainRecipe:
    """The optimisation recipe of pretraining: AdamW, warmup then decay over `max_steps` steps."""

    max_steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 50
    schedule: str = "cosine"
    min_lr: float = 0.0
    clip_grad: float | None = 1.0
    log_every: int = 20
    ckpt_every: int = 100  # steps between checkpoints/last.pt saves (resume after an interruption)
    amp: str | bool = "auto"  # auto (bf16 on CUDA) | bf16 | bf16_if_native | off: risbench/train/precision.py
    deterministic: bool = True
    threads: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):
            self.amp = "auto" if self.amp else "off"
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(f"max_steps and batch_size must be >= 1, got {self.max_steps} and {self.batch_size}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.ckpt_every < 1:
            raise ValueError("lr must be > 0, warmup_steps >= 0 and ckpt_every >= 1")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got '{self.amp}'")


@dataclass
class PretrainConfig:
    """One pretraining: the encoder of `model` (its fpn and decoder are not built) on `data`'s training split."""

    name: str = "pretrain"
    model: Any = "shared-ris-tiny"
    data: Any = "synthref"
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: PretrainRecipe = field(default_factory=PretrainRecipe)
    seed: int = 0
    eval_samples: int = 512  # held-out pairs (the data's val split) measured at the end; 0 = none
    description: str | None = None
    # a pretraining this one continues (preset name, YAML file or mapping), resolved into its full config:
    # its artifact's encoder, heads and tokenizer are the starting point (a staged curriculum)
    continue_from: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.eval_samples < 0:
            raise ValueError(f"eval_samples must be >= 0, got {self.eval_samples}")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name) or self.name.startswith("."):
            raise ValueError(f"name must be letters, digits, '-', '_' or '.', got {self.name!r}")


def load_pretrain_config(name_or_path: str) -> dict[str, Any]:
    """The raw config of a preset in registry/pretrain/ or of a YAML file."""
    return load_config(find_preset("pretrain", name_or_path))


def resolve_pretrain_config(raw: dict[str, Any], _chain: tuple[str, ...] = ()) -> tuple[PretrainConfig, dict[str, Any]]:
    """Validate a raw pretraining config; returns the dataclass and the resolved plain dict: the model
    as its complete spec and the data with every default filled in, so the hash pins everything
    (with `continue_from`, the whole chain of configs it continues)."""
    raw = copy.deepcopy(raw)
    parent = _resolve_parent(raw, _chain)
    if parent is not None and "model" not in raw:
        raw["model"] = parent["model"]
    raw["model"] = resolve_model(raw.get("model", PretrainConfig.model))
    raw["data"] = resolve_data(raw.get("data", PretrainConfig.data))
    objective = raw.get("objective")
    if isinstance(objective, str) or objective is None:
        objective = {"name": objective}
    if not isinstance(objective, dict):
        raise RisbenchError(f"pretrain config objective: expected a name or a mapping, got {objective!r}")
    objective = dict(objective)
    name = objective.pop("name", None)
    options = dict(objective.pop("options", {}) or {})
    options.update(objective)
    raw["objective"] = {"name": name, "options": options}
    raw["continue_from"] = parent
    cfg = to_dataclass(PretrainConfig, raw, "pretrain config")
    encoder_name = cfg.model["encoder"]["name"]
    if cfg.objective.name is None:
        cfg.objective.name = ENCODERS.get(encoder_name).obj.pretrain_objective
        if cfg.objective.name is None:
            raise RisbenchError(
                f"pretrain config: encoder '{encoder_name}' has no pretraining objective; name one under "
                f"objective.name ({', '.join(OBJECTIVES.names())})"
            )
    if parent is not None:
        _check_continuation(cfg, parent)
    options = OBJECTIVES.make_config(cfg.objective.name, cfg.objective.options, "pretrain config objective")
    cfg.objective.options = to_dict(options) if options is not None else {}
    resolved = to_dict(cfg)
    resolved["train"]["betas"] = list(cfg.train.betas)
    if parent is None:
        del resolved["continue_from"]  # absent, not null: the hashes of configs made before it stay valid
    return cfg, resolved


def parent_name(resolved: dict[str, Any]) -> str | None:
    """The artifact name (`<name>-<hash>`) of the pretraining a resolved config continues, or None."""
    parent = resolved.get("continue_from")
    return f"{parent['name']}-{config_hash(parent)}" if parent else None


def _resolve_parent(raw: dict[str, Any], chain: tuple[str, ...]) -> dict[str, Any] | None:
    value = raw.pop("continue_from", None)
    if value is None:
        return None
    if isinstance(value, str):
        if value in chain:
            raise RisbenchError(f"pretrain config continue_from: a cycle ({' -> '.join((*chain, value))})")
        chain = (*chain, value)
        value = load_pretrain_config(value)
    if not isinstance(value, dict):
        raise RisbenchError(
            f"pretrain config continue_from: expected a preset name, a file or a mapping, got {value!r}"
        )
    if len(chain) > 16:
        raise RisbenchError("pretrain config continue_from: more than 16 stages; is there a cycle?")
    return resolve_pretrain_config(value, chain)[1]


def _check_continuation(cfg: PretrainConfig, parent: dict[str, Any]) -> None:
    """The continued stage must build the same encoder, from nothing but the parent's artifact."""
    mine, theirs = dict(cfg.model["encoder"]), dict(parent["model"]["encoder"])
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise IncompatibleError(
            f"pretrain config continue_from: its encoder differs from {parent['name']}'s in "
            + ", ".join(f"{k} ({mine.get(k)!r} here, {theirs.get(k)!r} there)" for k in diff)
            + "; leave model out to continue the same encoder"
        )
    if cfg.tokenizer.path or cfg.tokenizer.vocab_size:
        raise RisbenchError(
            "pretrain config continue_from: the tokenizer is the continued artifact's; leave tokenizer.path and "
            "tokenizer.vocab_size unset"
        )
    if not OBJECTIVES.get(cfg.objective.name).obj.continues:
        raise RisbenchError(
            f"pretrain config continue_from: objective '{cfg.objective.name}' cannot continue an artifact"
        )
    if cfg.objective.name != parent["objective"]["name"]:
        raise IncompatibleError(
            f"pretrain config continue_from: objective '{cfg.objective.name}' here, "
            f"'{parent['objective']['name']}' in {parent['name']}; a stage continues the same objective's heads"
        )


def config_hash(resolved: dict[str, Any]) -> str:
    """12 hex digits of sha256 over the resolved config without the VOLATILE keys."""
    out = comparable(resolved, VOLATILE)
    objective = out.get("objective") or {}
    options = objective.get("options") or {}
    for key, value in LATER_OPTION_DEFAULTS.get(objective.get("name"), {}).items():
        if key in options and options[key] == value:
            del options[key]
    return hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:12]
