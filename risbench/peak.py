"""The device's peak matrix-multiply rate, the denominator of MFU (model FLOPs utilisation).

Two peaks are reported. The *measured* peak is the best rate of a large square GEMM on the device (bf16
on CUDA, fp32 on CPU), run once per device and cached in `peak_cache_path()` (a JSON file keyed by the
device's name, the dtype and, on CPU, the thread count; written atomically). The *nominal* peak is the
vendor's dense bf16 Tensor Core rate for the GPUs in `NOMINAL_BF16_TFLOPS` (docs/benchmarking.md cites the
datasheets); it is None for other devices. MFU = achieved FLOP/s / peak FLOP/s, the achieved rate counting
the model's FLOPs (fvcore multiply-adds x 2), not the FLOPs the kernels execute.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from risbench.io import atomic_write_json

# Dense (no 2:4 sparsity) bf16 Tensor Core TFLOP/s from NVIDIA's datasheets (half the "with sparsity"
# figure they print). Matched against torch.cuda.get_device_name in order, the most specific name first.
NOMINAL_BF16_TFLOPS: tuple[tuple[str, str, float], ...] = (
    ("H200 NVL", "H200 NVL", 835.0),
    ("H200", "H200 SXM", 989.0),
    ("H100 PCIe", "H100 PCIe", 756.0),
    ("H100 NVL", "H100 NVL", 835.0),
    ("H100", "H100 SXM", 989.0),
    ("A100", "A100 (SXM or PCIe)", 312.0),
)
GEMM_SIZES = {"cuda": (8192, 16384), "cpu": (1024,)}
GEMM_REPEATS = {"cuda": 20, "cpu": 5}


def nominal_peak(device_name: str) -> dict[str, Any] | None:
    """The datasheet's dense bf16 peak for a known GPU name ({'model', 'tflops'}), else None."""
    for needle, model, tflops in NOMINAL_BF16_TFLOPS:
        if needle.lower() in device_name.lower():
            return {"model": model, "tflops": tflops, "dtype": "bfloat16"}
    return None


def peak_cache_path() -> Path:
    """$RISBENCH_PEAK_CACHE, else $XDG_CACHE_HOME/risbench/peak.json, else ~/.cache/risbench/peak.json."""
    if os.environ.get("RISBENCH_PEAK_CACHE"):
        return Path(os.environ["RISBENCH_PEAK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "risbench" / "peak.json"


def _key(device: torch.device, name: str, dtype: torch.dtype) -> str:
    key = f"{name} | {str(dtype).removeprefix('torch.')}"
    return key + (f" | {torch.get_num_threads()} threads" if device.type == "cpu" else "")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_tflops(device: torch.device, n: int, dtype: torch.dtype, repeats: int) -> float:
    """Best TFLOP/s of an n x n x n matmul (2 n^3 FLOPs) over `repeats` timed calls, after one untimed."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def peak_dtype(device: torch.device, bf16: bool = False) -> torch.dtype:
    """The GEMM dtype a step is measured against: bf16 on CUDA; on CPU fp32, or bf16 when the step runs under
    bf16 autocast (avx512_bf16 / AMX make its GEMMs faster than fp32's, so an fp32 peak would be beaten)."""
    return torch.bfloat16 if device.type == "cuda" or bf16 else torch.float32


def measure_peak(device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Measure the GEMM peak on `device` now (default `peak_dtype`): the best over `GEMM_SIZES`."""
    dtype = dtype or peak_dtype(device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    rates = {n: gemm_tflops(device, n, dtype, GEMM_REPEATS[kind]) for n in GEMM_SIZES[kind]}
    best = max(rates, key=rates.get)
    return {
        "tflops": rates[best],
        "dtype": str(dtype).removeprefix("torch."),
        "gemm": f"{best}x{best}x{best}",
        "by_size": {str(n): round(r, 3) for n, r in rates.items()},
        "torch": torch.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def device_peak(
    device: torch.device, device_name: str, *, remeasure: bool = False, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """The measured peak of `device` in `dtype` (default `peak_dtype`; from the cache unless `remeasure` or
    absent) and the nominal one: {'measured': {...tflops, dtype, gemm, cached}, 'nominal': {...} or None,
    'cache': path}."""
    dtype = dtype or peak_dtype(device)
    path = peak_cache_path()
    key = _key(device, device_name, dtype)
    cache: dict[str, Any] = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}  # unreadable or half-written by another tool: measured again and rewritten
        if not isinstance(cache, dict):
            cache = {}
    entry = cache.get(key)
    cached = entry is not None and not remeasure
    if not cached:
        entry = measure_peak(device, dtype)
        cache[key] = entry
        try:
            atomic_write_json(path, cache)
        except OSError:
            pass  # a read-only home: the peak is still reported, only not kept
    return {"measured": {**entry, "cached": cached}, "nominal": nominal_peak(device_name), "cache": str(path)}


def mfu(achieved_flop_per_s: float, peak_tflops: float | None) -> float | None:
    """Achieved FLOP/s as a fraction of a peak in TFLOP/s (None without a peak)."""
    return achieved_flop_per_s / (peak_tflops * 1e12) if peak_tflops else None
