"""Speed of a pretraining objective's step (`risbench bench --pretrain NAME`): the same timing and FLOP
convention as `risbench.benchmark`, counting the objective's own forward (encoder and heads)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from risbench.benchmark import _memory, add_mfu, throughput, time_steps
from risbench.flops import count_flops
from risbench.io import device_info, git_info, package_versions
from risbench.train.optim import build_optimizer
from risbench.train.precision import uses_bf16, warn_if_slow_bf16


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
    peak: bool = True,
    remeasure_peak: bool = False,
) -> dict[str, Any]:
    """Time `steps` steps of a pretraining config's objective (random images, random word ids at the
    config's tokenizer.max_len) with `risbench pretrain`'s own step, after `warmup` untimed ones; with
    `peak`, the achieved rate against the device's GEMM peak in the step's precision (config train.amp)."""
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
    warn_if_slow_bf16(dev, cfg.train.amp)
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
    result = _memory(result, dev)
    if peak:
        add_mfu(result, dev, remeasure_peak, bf16=uses_bf16(dev, cfg.train.amp))
    return result
