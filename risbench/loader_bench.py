"""Input-pipeline speed for `risbench bench --data`: the training DataLoader of a dataset for a model.

`build_train_loader` builds what the trainer builds (the dataset's training split with the encoder's
transform, the tokenizer the run would train or load, the collator, the DataLoader options of
`train.speed`), cycling over epochs. `loader_throughput` times it alone: images/s of the loader and
milliseconds per image (with 0 workers, the decode and transform cost of one image on one core).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from risbench.data.build import build_dataset, train_texts
from risbench.data.collate import Collator
from risbench.data.tokenizers import build_tokenizer
from risbench.errors import RisbenchError
from risbench.train.config import resolve_data
from risbench.train.speed import SpeedConfig, loader_options


def build_train_loader(
    data: str | dict[str, Any],
    model: nn.Module,
    *,
    batch_size: int,
    text_len: int,
    num_workers: int = 0,
    speed: SpeedConfig | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """An endless iterator of training batches of `data` (a preset name, YAML path or mapping) for `model`."""
    from risbench.train.components import default_cache_dir

    resolved = resolve_data(data)
    enc = model.encoder
    cache = cache_dir or default_cache_dir() / "tokenizers"
    tokenizer = build_tokenizer(enc.tokenizer_family, None, train_texts(resolved), cache, int(enc.vocab_size))
    ds = build_dataset(
        resolved,
        "train",
        image_size=int(enc.image_size),
        mean=enc.pixel_mean,
        std=enc.pixel_std,
        train=True,
        seed=seed,
        resize=getattr(enc, "input_resize", "stretch"),
    )
    if len(ds) < batch_size:
        raise RisbenchError(f"--data: the training split has {len(ds)} samples, fewer than the batch {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    opts = loader_options(speed or SpeedConfig(), device or torch.device("cpu"), num_workers)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=Collator(tokenizer, text_len),
        generator=gen,
        **opts,
    )
    return itertools.chain.from_iterable(itertools.repeat(loader))


def loader_throughput(batches: Iterator[dict[str, Any]], batch_size: int, n_batches: int, warmup: int = 1):
    """Images/s and ms per image of `batches` alone (after `warmup` batches: workers start, caches fill)."""
    for _ in range(warmup):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    seconds = time.perf_counter() - t0
    return {
        "images_per_s": batch_size * n_batches / seconds,
        "ms_per_image": 1000 * seconds / (batch_size * n_batches),
        "batches": n_batches,
    }
