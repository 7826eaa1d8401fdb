"""Data-parallel scaling on paper (docs/scaling.md): gradient bytes per step, ring all-reduce time at a link
bandwidth, and the step time and throughput expected at N GPUs from a measured single-GPU step.

Ring all-reduce of S bytes over N GPUs (reduce-scatter then all-gather): each GPU sends, and receives,
2 (N - 1) / N x S bytes over its slowest link, so t = 2 (N - 1) / N x S / B, with B that link's bandwidth per
direction (NCCL's "bus bandwidth"); the per-hop latency, 2 (N - 1) x alpha, is left out (DDP's 25 MB buckets:
microseconds against milliseconds). Weak scaling: each GPU keeps its batch, so the compute of a step stays
the measured single-GPU step t_step. Two bounds of the step at N GPUs: without overlap t_step + t_ar; with
DDP's overlap of the all-reduce with the backward pass t_step + max(0, t_ar - t_backward), t_backward being
2/3 of the step (the backward = 2 forwards convention of `risbench bench`). Efficiency = t_step / that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Links (bytes/s per direction per GPU). Sources in docs/scaling.md.
LINKS = {
    "NVLink 4 (H100 SXM, 900 GB/s bidirectional)": 450e9,
    "InfiniBand NDR (400 Gb/s per GPU)": 400e9 / 8,
}
GRAD_BYTES = {"fp32 grads (DDP default under autocast)": 4, "bf16 grads (bf16_compress_hook)": 2}
BACKWARD_SHARE = 2 / 3


@dataclass(frozen=True)
class Setting:
    """A cluster shape: GPUs in all, and the link their ring's slowest hop runs over."""

    gpus: int
    link: str


SETTINGS = (
    Setting(8, "NVLink 4 (H100 SXM, 900 GB/s bidirectional)"),
    Setting(64, "InfiniBand NDR (400 Gb/s per GPU)"),
)


def trainable_parameters(model: str = "shared-ris-b") -> int:
    """Trainable parameters of a model preset, built on the meta device (no memory, no init cost)."""
    from risbench.models.segmenter import build_segmenter
    from risbench.spec import resolve_model_spec

    with torch.device("meta"):
        net = build_segmenter(resolve_model_spec(model, []))
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def ring_allreduce_seconds(nbytes: float, gpus: int, bandwidth: float) -> float:
    """Bandwidth term of a ring all-reduce of `nbytes` over `gpus` at `bandwidth` bytes/s per direction."""
    return 2 * (gpus - 1) / gpus * nbytes / bandwidth if gpus > 1 else 0.0


def scale(step_s: float, batch: int, ar_s: float, gpus: int) -> dict[str, float]:
    """The step and throughput at `gpus` GPUs, without and with overlap of the all-reduce and backward."""
    exposed = max(0.0, ar_s - BACKWARD_SHARE * step_s)
    return {
        "step_ms_no_overlap": 1000 * (step_s + ar_s),
        "step_ms_overlap": 1000 * (step_s + exposed),
        "efficiency_no_overlap": step_s / (step_s + ar_s),
        "efficiency_overlap": step_s / (step_s + exposed),
        "images_per_s_overlap": gpus * batch / (step_s + exposed),
    }


def scaling_rows(params: int, steps: dict[int, float], speedup: float = 3.0) -> list[dict[str, Any]]:
    """One row per (smallest and largest measured batch, step as measured or `speedup` x faster, gradient
    dtype, setting)."""
    rows = []
    ends = sorted({min(steps), max(steps)})  # the smallest and largest measured batch
    for batch, step_s in ((b, steps[b]) for b in ends):
        for label, t in (("measured", step_s), (f"{speedup:g}x faster (issue 17 target)", step_s / speedup)):
            for grads, nbytes_per in GRAD_BYTES.items():
                nbytes = params * nbytes_per
                for s in SETTINGS:
                    ar = ring_allreduce_seconds(nbytes, s.gpus, LINKS[s.link])
                    rows.append(
                        {"batch": batch, "step": label, "step_ms": 1000 * t, "grads": grads, "grad_mb": nbytes / 1e6,
                         "gpus": s.gpus, "link": s.link, "allreduce_ms": 1000 * ar, **scale(t, batch, ar, s.gpus)}
                    )  # fmt: skip
    return rows


def measured_steps(bench_json: Path) -> dict[int, float]:
    """Median seconds per train step by batch size from a `risbench bench --out` file."""
    results = json.loads(Path(bench_json).read_text())["results"]
    return {r["input"]["batch_size"]: r["s_per_step_median"] for r in results if r["mode"] == "train"}


def markdown(params: int, bench_json: Path, rows: list[dict[str, Any]]) -> str:
    """The table of docs/scaling.md (between its markers), with what it was computed from."""
    head = (
        "| batch/GPU | step | ms/step (1 GPU) | grads | MB | GPUs | slowest link | all-reduce ms | "
        "ms/step, no overlap | eff. | ms/step, overlap | eff. | images/s |"
    )
    md = [
        f"Computed by `python scripts/scaling.py` from `{bench_json}` and the trainable parameters of "
        f"shared-ris-b ({params:,}).",
        "",
        head,
        "|---:|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['batch']} | {r['step']} | {r['step_ms']:.1f} | {r['grads']} | {r['grad_mb']:.0f} | {r['gpus']} | "
            f"{r['link']} | {r['allreduce_ms']:.2f} | {r['step_ms_no_overlap']:.1f} | "
            f"{100 * r['efficiency_no_overlap']:.1f}% | {r['step_ms_overlap']:.1f} | "
            f"{100 * r['efficiency_overlap']:.1f}% | {r['images_per_s_overlap']:.0f} |"
        )
    return "\n".join(md) + "\n"
