"""Which precision a step runs in: the `amp` setting of a recipe or a pretraining config, resolved on a device.

- `off`: fp32.
- `auto`: bf16 autocast on CUDA, fp32 on CPU.
- `bf16`: bf16 autocast on any device.
- `bf16_if_native`: bf16 autocast where the device computes bf16 natively (a CUDA GPU with bf16, a CPU whose
  oneDNN has bf16 kernels: AVX-512 or AMX), fp32 elsewhere. On a CPU with only AVX2, a bf16 matrix product
  runs over 100x slower than an fp32 one (measured 2026-12-02 on a 2-core AMD EPYC: 0.99 against 160 GFLOP/s
  for 1024^3) and a shared-ris-tiny training step 16x slower (README), so a recipe meant for every CPU asks
  for this mode (docs/decisions.md §5).

The effective precision goes into a run's provenance (`precision`), since one config runs in bf16 on one
machine and in fp32 on another.
"""

from __future__ import annotations

import contextlib
import logging
from functools import cache

import torch

AMP_MODES = ("auto", "bf16", "bf16_if_native", "off")

logger = logging.getLogger("risbench")


@cache
def _cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the check: assume the slow path
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matrix products natively (not emulated at a fraction of fp32's speed)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return _cpu_bf16()
    return False


def uses_bf16(device: torch.device, amp: str) -> bool:
    """Whether `amp` means bf16 autocast on `device` (the module docstring has the modes)."""
    if amp == "bf16_if_native":
        return native_bf16(device)
    return amp == "bf16" or (amp == "auto" and device.type == "cuda")


def precision_name(device: torch.device, amp: str) -> str:
    """The precision a step with `amp` runs in on `device`, as the provenance and the reports say it."""
    return "bf16 autocast" if uses_bf16(device, amp) else "fp32"


def autocast_context(device: torch.device, amp: str):
    """bf16 autocast where `uses_bf16`, else nothing."""
    if not uses_bf16(device, amp):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def slow_bf16_warning(device: torch.device, amp: str, key: str = "train.amp") -> str | None:
    """One line when an explicit bf16 will run emulated on `device` (and how to avoid it), else None."""
    if amp != "bf16" or native_bf16(device):
        return None
    where = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else device.type
    return (
        f"{key}=bf16 on a {device.type} without native bf16 ({where}): bf16 matrix products are emulated here, "
        f"over 100x slower than fp32; set {key}=bf16_if_native (bf16 only where native) or {key}=off"
    )


def warn_if_slow_bf16(device: torch.device, amp: str, key: str = "train.amp") -> None:
    """Log `slow_bf16_warning` if there is one."""
    message = slow_bf16_warning(device, amp, key)
    if message:
        logger.warning(message)
