"""Speed and memory of one model's training step (or forward pass): the costs FLOPs leave out.

`benchmark_step` builds the model (random init unless its spec names weights), feeds it random images
at the encoder's input size and random token ids of a fixed length, and times whole steps of the
recipe with the trainer's own `optimization_step`: forward under the chosen autocast, the recipe's loss
(2.0 BCE + 0.5 Dice) plus the decoder's auxiliary losses, backward, gradient clipping and an AdamW
step. Warm-up steps (allocator, cuDNN autotuning, lazy inits) are not timed. On CUDA each timed window is bracketed by
`torch.cuda.synchronize()`, and the peak memory is `torch.cuda.max_memory_allocated` over the timed
steps (tensors PyTorch allocated; the process's total, with the CUDA context and the caching
allocator's slack, is higher: `max_memory_reserved` is reported too).

Data loading is excluded on purpose: the number is the model's cost, comparable across components.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from risbench.errors import RisbenchError
from risbench.io import device_info, git_info, package_versions
from risbench.models.segmenter import build_segmenter
from risbench.spec import resolve_model_spec
from risbench.train.config import TrainConfig
from risbench.train.evaluate import autocast_context, uses_bf16
from risbench.train.losses import build_loss
from risbench.train.optim import build_optimizer, optimization_step

MODES = ("train", "infer")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_step(
    model: str,
    overrides: list[str] | None = None,
    *,
    batch_size: int = 8,
    amp: str = "auto",
    mode: str = "train",
    device: str = "auto",
    steps: int = 20,
    warmup: int = 5,
    text_len: int = 20,
    seed: int = 0,
    on_step: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Time `steps` steps of `model` (a preset name or YAML path) after `warmup` untimed ones; `on_step`
    is called after each step with (phase 'warm-up' | 'timed', steps done in the phase, its total)."""
    if mode not in MODES:
        raise RisbenchError(f"--mode: expected one of {', '.join(MODES)}, got '{mode}'")
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise RisbenchError("need --steps >= 1, --warmup >= 0 and --batch-size >= 1")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RisbenchError("--device cuda: no CUDA device is visible; use --device cpu")
    dev = torch.device(device)
    try:
        recipe = TrainConfig(amp=amp)  # the paper's optimizer and loss
    except ValueError as exc:
        raise RisbenchError(f"--amp: {exc}") from None
    torch.manual_seed(seed)
    spec = resolve_model_spec(model, list(overrides or []))
    net = build_segmenter(spec).to(dev)
    enc = net.encoder
    size = int(enc.image_size)
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randn(batch_size, 3, size, size, generator=gen).to(dev),
        "text_ids": torch.randint(3, int(enc.vocab_size), (batch_size, text_len), generator=gen).to(dev),
        "text_pad_mask": torch.zeros(batch_size, text_len, dtype=torch.bool, device=dev),
        "mask": (torch.rand(batch_size, size, size, generator=gen) > 0.8).to(dev),
    }
    loss_fn = build_loss(recipe.loss.name, recipe.loss.options)
    optimizer = build_optimizer(net, recipe)

    def train_step() -> None:
        optimization_step(net, net.decoder, loss_fn, optimizer, batch, dev, amp=recipe.amp, clip_grad=recipe.clip_grad)

    @torch.no_grad()
    def infer_step() -> None:
        with autocast_context(dev, recipe.amp):
            net(batch["image"], batch["text_ids"], batch["text_pad_mask"])

    step = train_step if mode == "train" else infer_step
    net.train(mode == "train")
    report = on_step or (lambda phase, done, total: None)
    for i in range(warmup):
        step()
        report("warm-up", i + 1, warmup)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
        report("timed", i + 1, steps)
    median = statistics.median(times)
    result: dict[str, Any] = {
        "model": model,
        "overrides": list(overrides or []),
        "mode": mode,
        "weights": net.weights,
        "input": {"image_size": size, "text_len": text_len, "batch_size": batch_size},
        "amp": "bf16 autocast" if uses_bf16(dev, recipe.amp) else "off (fp32)",
        "steps": steps,
        "warmup": warmup,
        "s_per_step_median": median,
        "s_per_step_mean": statistics.fmean(times),
        "images_per_s": batch_size / median,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "device": device_info(dev),
        "git": git_info(),
        "versions": package_versions(),
        "seed": seed,
    }
    if dev.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2**30
        result["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return result
