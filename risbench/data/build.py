"""Build datasets from a `data:` config: a preset name from registry/datasets/, or a mapping
`{"name": <registered dataset>, ...options}` (optionally `{"preset": <preset name>, ...overrides}`)."""

from __future__ import annotations

from typing import Any

from risbench.config import find_preset
from risbench.errors import RisbenchError
from risbench.registry import DATASETS
from risbench.spec import load_config, merge


def resolve_data_config(data_cfg: str | dict[str, Any]) -> dict[str, Any]:
    """A preset name / YAML path / mapping -> the full option mapping, with "name"."""
    if isinstance(data_cfg, str):
        cfg = load_config(find_preset("datasets", data_cfg))
    elif isinstance(data_cfg, dict):
        cfg = dict(data_cfg)
        preset = cfg.pop("preset", None)
        if preset is not None:
            cfg = merge(load_config(find_preset("datasets", preset)), cfg)
    else:
        raise RisbenchError(f"data: expected a preset name or a mapping, got {type(data_cfg).__name__}")
    cfg.pop("description", None)
    if "name" not in cfg:
        raise RisbenchError(f"data: missing 'name' (one of {', '.join(DATASETS.names())}) in {data_cfg!r}")
    return cfg


def dataset_class_and_config(data_cfg: str | dict[str, Any]) -> tuple[Any, Any]:
    """(registered dataset class, its validated config dataclass)."""
    cfg = resolve_data_config(data_cfg)
    name = cfg.pop("name")
    entry = DATASETS.get(name)
    return entry.obj, DATASETS.make_config(name, cfg, f"data ({name})")


def build_dataset(
    data_cfg: str | dict[str, Any],
    split: str,
    *,
    image_size: int,
    mean,
    std,
    train: bool,
    seed: int = 0,
    resize: str = "stretch",
):
    """A torch Dataset of one split: one sentence per ref when `train` (see `set_epoch`), else every sentence.
    `resize`: stretch to the square input, or letterbox (risbench.data.transforms)."""
    cls, config = dataset_class_and_config(data_cfg)
    extra = {} if resize == "stretch" else {"resize": resize}  # a dataset class of its own may not take it
    return cls(config, split, image_size=image_size, mean=mean, std=std, train=train, seed=seed, **extra)


def train_texts(data_cfg: str | dict[str, Any]) -> list[str]:
    """The training split's expressions (negatives included where the dataset has them), in a fixed order,
    for training a tokenizer (SynthRef: those of its first 2,000 training scenes, which cover its vocabulary)."""
    cls, config = dataset_class_and_config(data_cfg)
    return cls.train_texts(config)


def split_names(data_cfg: str | dict[str, Any]) -> list[str]:
    """The dataset's split names, training split first (e.g. train, val, testA, testB)."""
    cls, config = dataset_class_and_config(data_cfg)
    return cls.split_names(config)
