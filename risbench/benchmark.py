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

Achieved GFLOP/s: fvcore's multiply-adds of one forward pass per image (`risbench flops`), times 2 FLOPs
each, times the batch, times 3 for a train step (the backward pass costs about twice the forward: the
usual 6 x MACs rule) or 1 for an infer step, over the median step time. `benchmark_pretrain_step` does
the same for a pretraining objective's step (`risbench bench --pretrain NAME`), counting the
objective's own forward (encoder and heads) with the same tracer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from risbench.errors import RisbenchError
from risbench.flops import count_flops, measure
from risbench.io import device_info, git_info, package_versions
from risbench.models.segmenter import build_segmenter
from risbench.spec import resolve_model_spec
from risbench.train.config import TrainConfig
from risbench.train.evaluate import autocast_context, uses_bf16
from risbench.train.losses import build_loss
from risbench.train.optim import build_optimizer, optimization_step

MODES = ("train", "infer")
PASSES = {"train": 3, "infer": 1, "pretrain": 3}  # forward-pass equivalents a step costs (backward = 2 forwards)


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

    macs = measure(net, size, text_len)["total"]["flops"]
    step = train_step if mode == "train" else infer_step
    net.train(mode == "train")
    times = time_steps(step, dev, steps, warmup, on_step)
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
        **throughput(macs, batch_size, mode, median),
        "device": device_info(dev),
        "git": git_info(),
        "versions": package_versions(),
        "seed": seed,
    }
    return _memory(result, dev)


def time_steps(
    step: Callable[[], Any],
    dev: torch.device,
    steps: int,
    warmup: int,
    on_step: Callable[[str, int, int], None] | None = None,
) -> list[float]:
    """Seconds of each of `steps` calls of `step` after `warmup` untimed ones (CUDA synchronised);
    `on_step(phase, done, total)` is told after each call."""
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
    return times


def throughput(macs_per_image: int, batch_size: int, mode: str, seconds: float) -> dict[str, float]:
    """FLOPs of one step and the achieved GFLOP/s (see the module docstring for the convention)."""
    flops = 2 * macs_per_image * batch_size * PASSES[mode]
    return {
        "gmacs_per_image": macs_per_image / 1e9,
        "gflop_per_step": flops / 1e9,
        "achieved_gflop_per_s": flops / seconds / 1e9,
    }


def _memory(result: dict[str, Any], dev: torch.device) -> dict[str, Any]:
    if dev.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2**30
        result["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return result


class _ObjectiveLoss(torch.nn.Module):
    """Traced wrapper: a pretraining objective's loss from (image, ids, padding) tensors."""

    def __init__(self, objective: torch.nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, image, text_ids, text_pad_mask):  # noqa: D102
        return self.objective({"image": image, "text_ids": text_ids, "text_pad_mask": text_pad_mask})[0]


def benchmark_pretrain_step(
    config: str,
    overrides: list[str] | None = None,
    *,
    batch_size: int | None = None,
    device: str = "auto",
    steps: int = 20,
    warmup: int = 5,
    seed: int = 0,
    on_step: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Time `steps` steps of a pretraining config's objective (random images, random word ids at the
    config's tokenizer.max_len) with `risbench pretrain`'s own step, after `warmup` untimed ones."""
    from risbench.spec import apply_overrides
    from risbench.train.config import normalize_raw
    from risbench.train.pretrain import build_objective, pretrain_step, tokenizer_cache
    from risbench.train.pretrain_config import load_pretrain_config, resolve_pretrain_config

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    raw = apply_overrides(normalize_raw(load_pretrain_config(config)), list(overrides or []))
    cfg, resolved = resolve_pretrain_config(raw)
    bs = batch_size or cfg.train.batch_size
    torch.manual_seed(seed)
    objective, tokenizer, _ = build_objective(cfg, resolved, tokenizer_cache(cfg))
    objective.to(dev).train()
    enc = objective.encoder
    size, text_len = int(enc.image_size), int(cfg.tokenizer.max_len)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, int(enc.vocab_size), (bs, text_len), generator=gen)
    ids[:, 0], ids[:, -1] = int(tokenizer.bos_id), int(tokenizer.eos_id)
    image = torch.randn(bs, 3, size, size, generator=gen)
    pad = torch.zeros(bs, text_len, dtype=torch.bool)
    batch = {"image": image.to(dev), "text_ids": ids.to(dev), "text_pad_mask": pad.to(dev)}
    with torch.no_grad():
        by_module, _ = count_flops(_ObjectiveLoss(objective), (image[:1].to(dev), ids[:1].to(dev), pad[:1].to(dev)))
    optimizer = build_optimizer(objective, cfg.train)
    times = time_steps(
        lambda: pretrain_step(objective, optimizer, batch, dev, cfg.train.amp, cfg.train.clip_grad),
        dev,
        steps,
        warmup,
        on_step,
    )
    median = statistics.median(times)
    result: dict[str, Any] = {
        "model": f"pretrain {cfg.name} ({cfg.objective.name})",
        "overrides": list(overrides or []),
        "mode": "pretrain",
        "weights": "random",
        "input": {"image_size": size, "text_len": text_len, "batch_size": bs},
        "amp": "bf16 autocast" if uses_bf16(dev, cfg.train.amp) else "off (fp32)",
        "steps": steps,
        "warmup": warmup,
        "s_per_step_median": median,
        "s_per_step_mean": statistics.fmean(times),
        "images_per_s": bs / median,
        "params_m": sum(p.numel() for p in objective.parameters()) / 1e6,
        **throughput(int(by_module.get("", 0)), bs, "pretrain", median),
        "device": device_info(dev),
        "git": git_info(),
        "versions": package_versions(),
        "seed": seed,
    }
    return _memory(result, dev)
