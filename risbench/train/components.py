"""What a run builds from its config before training or evaluation.

Process settings (determinism, threads), the model, the tokenizer (trained on the training expressions and
cached when no file is given; rank 0 first), the collator and the datasets."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from risbench.config import PROJECT_ROOT
from risbench.data.build import build_dataset, train_texts
from risbench.data.collate import Collator
from risbench.data.tokenizers import build_tokenizer
from risbench.models.segmenter import build_segmenter
from risbench.train.config import RunConfig
from risbench.train.distributed import DistInfo, barrier


def default_cache_dir() -> Path:
    return Path(os.environ.get("RISBENCH_CACHE", PROJECT_ROOT / ".cache"))


def set_determinism(cfg: RunConfig, device: torch.device) -> None:
    if not cfg.train.deterministic:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)
    # Deterministic mode also fills every new tensor with NaN to expose reads of uninitialised memory:
    # a debugging aid that costs ~5% of a CPU step here (thousands of fill_ calls) and changes no result.
    torch.utils.deterministic.fill_uninitialized_memory = False


@contextlib.contextmanager
def process_settings(cfg: RunConfig, device: torch.device):
    """Deterministic algorithms and the thread count for the duration of a run, restored afterwards
    (a run inside a longer-lived process, e.g. a test session or a local sweep, leaves no trace)."""
    det, warn, threads, fill = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_num_threads(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    try:
        set_determinism(cfg, device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.set_num_threads(threads)


@dataclass
class Components:
    """Everything built from a config that training and evaluation need."""

    model: nn.Module
    tokenizer: Any
    collator: Any
    data_cfg: Any
    image_size: int


def build_components(cfg: RunConfig, resolved: dict[str, Any], info: DistInfo) -> Components:
    """Model (on the device), tokenizer (rank 0 trains/caches it first) and collator."""
    model = build_segmenter(resolved["model"]).to(info.device)
    enc = model.encoder
    vocab = cfg.tokenizer.vocab_size or enc.vocab_size
    cache = Path(cfg.tokenizer.cache_dir) if cfg.tokenizer.cache_dir else default_cache_dir() / "tokenizers"

    def make():
        texts = None if cfg.tokenizer.path else train_texts(resolved["data"])
        return build_tokenizer(enc.tokenizer_family, cfg.tokenizer.path, texts, cache, vocab)

    if info.is_main:
        tokenizer = make()
    barrier(info)
    if not info.is_main:
        tokenizer = make()
    return Components(model, tokenizer, Collator(tokenizer, cfg.tokenizer.max_len), resolved["data"], enc.image_size)


def build_split(comp: Components, split: str, *, train: bool, seed: int):
    enc = comp.model.encoder
    return build_dataset(
        comp.data_cfg,
        split,
        image_size=comp.image_size,
        mean=enc.pixel_mean,
        std=enc.pixel_std,
        train=train,
        seed=seed,
        resize=getattr(enc, "input_resize", "stretch"),
    )


def check_first_batches(comp: Components, cfg: RunConfig) -> None:
    """Load the first batch of every split the run uses (training, validation, final evaluation) before
    step 1, so that a missing or unreadable image fails at once, naming the file (a RisbenchError), not
    at the first validation or the final evaluation."""
    splits = {"train": True}
    for split in (cfg.eval.val_split, *cfg.eval.splits):
        if split:
            splits.setdefault(split, False)
    for split, train in splits.items():
        ds = build_split(comp, split, train=train, seed=cfg.seed)
        n = min(len(ds), cfg.train.batch_size if train else cfg.eval.batch_size)
        comp.collator([ds[i] for i in range(n)])
