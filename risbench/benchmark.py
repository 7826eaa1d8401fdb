"""Speed and memory of one model's training step (or forward pass): the costs FLOPs leave out.

`benchmark_step` builds the model (random init unless its spec names weights), feeds it random images
at the encoder's input size and random token ids of a fixed length (or, with `data`, a dataset's training
DataLoader), and times whole steps of the recipe with the trainer's own `optimization_step`: the batch
copied to the device, forward under the chosen autocast, the recipe's loss (2.0 BCE + 0.5 Dice) plus the
decoder's auxiliary losses, backward, gradient clipping and an AdamW step, with the `train.speed`
switches given. Warm-up steps (allocator, cuDNN autotuning, torch.compile) are not timed. The timed steps
run back to back; each phase boundary is a CUDA event (`risbench.step_timing`), read after one final
synchronisation, so a step's time and its data / forward / backward / optimizer shares come from the GPU's
timeline (on CPU from `time.perf_counter`). The peak memory is `torch.cuda.max_memory_allocated` over
the timed steps (`max_memory_reserved` is reported too). `risbench.baseline.plain_loop` times the same
step as a plain PyTorch loop, so the harness's overhead is a number.

Achieved FLOP/s: fvcore's multiply-adds of one forward pass per image (`risbench flops`), times 2 FLOPs
each, times the batch, times 3 for a train step (the backward pass costs about twice the forward: the
usual 6 x MACs rule) or 1 for an infer step, over the median step time. MFU divides it by the device's
GEMM peak (`risbench.peak`: measured once per device and cached) and, for a known GPU, by its nominal
dense bf16 peak. `risbench.benchmark_pretrain` does the same for a pretraining objective's step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from risbench.baseline import plain_loop
from risbench.config import to_dict
from risbench.errors import RisbenchError
from risbench.flops import measure
from risbench.io import device_info, git_info, package_versions
from risbench.models.segmenter import build_segmenter
from risbench.peak import device_peak, mfu, peak_dtype
from risbench.spec import resolve_model_spec
from risbench.step_timing import PhaseClock, summarize, time_phased
from risbench.train.config import TrainConfig
from risbench.train.losses import build_loss
from risbench.train.optim import build_optimizer, optimization_step
from risbench.train.precision import autocast_context, uses_bf16, warn_if_slow_bf16
from risbench.train.speed import (
    SpeedConfig,
    compile_loss,
    compile_step_model,
    loader_options,
    prepare_model,
    sync_every_step,
)

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
    speed: list[str] | None = None,
    data: str | None = None,
    num_workers: int = 0,
    baseline: bool = True,
    peak: bool = True,
    remeasure_peak: bool = False,
    macs: int | None = None,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Time `steps` steps of `model` (a preset name or YAML path) after `warmup` untimed ones; `on_step`
    is called after each step with (phase 'warm-up' | 'timed', steps done in the phase, its total).

    `speed`: `train.speed` switches as KEY=VALUE (risbench/train/speed.py). `data`: a dataset preset whose
    training DataLoader feeds the steps (else one random batch on the host, copied each step).
    `baseline`: also time the plain PyTorch loop (`plain_loop_step`) on the same batch. `peak`: the
    device's GEMM peak (cached) and MFU. `macs`: the model's multiply-adds per image when already counted
    (a series of runs of one model), else fvcore counts them. `wrap`: applied to the model before
    torch.compile (e.g. DistributedDataParallel, for `scripts/gpu_ddp_step.py`)."""
    if mode not in MODES:
        raise RisbenchError(f"--mode: expected one of {', '.join(MODES)}, got '{mode}'")
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise RisbenchError("need --steps >= 1, --warmup >= 0 and --batch-size >= 1")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RisbenchError("--device cuda: no CUDA device is visible; use --device cpu")
    dev = torch.device(device)
    recipe = _recipe(amp, speed)
    warn_if_slow_bf16(dev, recipe.amp, "--amp")
    torch.manual_seed(seed)
    spec = resolve_model_spec(model, list(overrides or []))
    net = build_segmenter(spec).to(dev)
    enc = net.encoder
    size = int(enc.image_size)
    macs = macs or measure(net, size, text_len)["total"]["flops"]
    prepare_model(net, recipe.speed)
    step_model = compile_step_model(wrap(net) if wrap else net, recipe.speed)
    batches = _batches(net, dev, batch_size, text_len, seed, recipe, data, num_workers)
    loss_fn = compile_loss(build_loss(recipe.loss.name, recipe.loss.options), recipe.speed)
    optimizer = build_optimizer(net, recipe, dev)
    check = sync_every_step(recipe.speed, dev)

    def train_step(clock: PhaseClock) -> None:
        clock.start()
        batch = next(batches)
        optimization_step(
            step_model, net.decoder, loss_fn, optimizer, batch, dev, amp=recipe.amp, clip_grad=recipe.clip_grad,
            check_finite=check, drop_unpadded_mask=recipe.speed.drop_unpadded_mask, mark=clock.mark,
        )  # fmt: skip

    @torch.no_grad()
    def infer_step(clock: PhaseClock) -> None:
        clock.start()
        batch = next(batches)
        image, ids, pad = (batch[k].to(dev, non_blocking=True) for k in ("image", "text_ids", "text_pad_mask"))
        clock.mark("data")
        with autocast_context(dev, recipe.amp):
            step_model(image, ids, pad)
        clock.mark("forward")

    net.train(mode == "train")
    timed = summarize(time_phased(train_step if mode == "train" else infer_step, dev, steps, warmup, on_step))
    median = timed["s_per_step_median"]
    result: dict[str, Any] = {
        "model": model,
        "overrides": list(overrides or []),
        "mode": mode,
        "weights": net.weights,
        "input": {"image_size": size, "text_len": text_len, "batch_size": batch_size},
        "amp": "bf16 autocast" if uses_bf16(dev, recipe.amp) else "off (fp32)",
        "speed": to_dict(recipe.speed),
        "data": data or "random (one host batch)",
        "num_workers": num_workers,
        "steps": steps,
        "warmup": warmup,
        **timed,
        "images_per_s": batch_size / median,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        **throughput(macs, batch_size, mode, median),
        "device": device_info(dev),
        "git": git_info(),
        "versions": package_versions(),
        "seed": seed,
    }
    result = _memory(result, dev)
    if baseline:
        plain = plain_loop(net, step_model, recipe, next(batches), dev, mode, steps, warmup)
        result["plain_loop_s_per_step_median"] = plain
        result["harness_overhead_pct"] = 100.0 * (median - plain) / plain
    if peak:
        add_mfu(result, dev, remeasure_peak, bf16=uses_bf16(dev, recipe.amp))
    return result


def _recipe(amp: str, speed: list[str] | None) -> TrainConfig:
    from risbench.config import to_dataclass
    from risbench.spec import apply_overrides

    try:
        recipe = TrainConfig(amp=amp)  # the paper's optimizer and loss
    except ValueError as exc:
        raise RisbenchError(f"--amp: {exc}") from None
    if speed:
        recipe.speed = to_dataclass(SpeedConfig, apply_overrides({}, list(speed)), "--speed")
    return recipe


def _batches(net, dev, batch_size, text_len, seed, recipe, data, num_workers) -> Iterator[dict[str, Any]]:
    """The step's input batches: a dataset's training loader, or one random batch on the host (pinned on
    CUDA), so that every step copies its batch to the device as a training step does."""
    if data:
        from risbench.loader_bench import build_train_loader

        return build_train_loader(
            data, net, batch_size=batch_size, text_len=text_len, num_workers=num_workers, speed=recipe.speed,
            device=dev, seed=seed,
        )  # fmt: skip
    size, vocab = int(net.encoder.image_size), int(net.encoder.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randn(batch_size, 3, size, size, generator=gen),
        "text_ids": torch.randint(3, vocab, (batch_size, text_len), generator=gen),
        "text_pad_mask": torch.zeros(batch_size, text_len, dtype=torch.bool),
        "mask": torch.rand(batch_size, size, size, generator=gen) > 0.8,
    }
    if loader_options(recipe.speed, dev, 0)["pin_memory"]:
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return itertools.repeat(batch)


def add_mfu(
    result: dict[str, Any], dev: torch.device, remeasure: bool = False, *, bf16: bool = False
) -> dict[str, Any]:
    """Achieved TFLOP/s and MFU against the measured GEMM peak (in the step's precision) and, for a known GPU,
    the nominal one. A cached peak that the step itself beats was measured on a busy machine: it is measured
    again once, and `peak_remeasured` says so."""
    dtype = peak_dtype(dev, bf16=bf16)
    peaks = device_peak(dev, result["device"]["name"], remeasure=remeasure, dtype=dtype)
    achieved = result["achieved_gflop_per_s"] * 1e9
    if peaks["measured"]["cached"] and achieved > peaks["measured"]["tflops"] * 1e12:
        peaks = device_peak(dev, result["device"]["name"], remeasure=True, dtype=dtype)
        result["peak_remeasured"] = "the cached peak was below this step's rate (measured under load?)"
    nominal = peaks["nominal"]
    result.update(
        achieved_tflop_per_s=achieved / 1e12,
        peak=peaks,
        mfu_measured=mfu(achieved, peaks["measured"]["tflops"]),
        mfu_nominal=mfu(achieved, nominal["tflops"]) if nominal else None,
    )
    return result


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
