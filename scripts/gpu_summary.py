"""summary.md of a `scripts/gpu_bench.py` run: every table rendered from the files the run wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from risbench.cli.bench import where
from risbench.io import atomic_write_text


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def step_table(results: dict[str, dict | None], prefix: str, reference: str | None) -> list[str]:
    """One row per measured variant: speed, MFU, phase shares, harness overhead, speed-up over `reference`."""
    ref = results.get(reference) if reference else None
    md = [
        "| variant | ms/step | images/s | TFLOP/s | MFU (measured peak) | MFU (nominal) | x before | data | fwd | "
        "bwd | opt | harness vs plain | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        if not name.startswith(prefix) or r is None:
            continue
        share = r["phase_share"]
        speedup = ref["s_per_step_median"] / r["s_per_step_median"] if ref else None
        md.append(
            f"| {name.removeprefix(prefix)} | {1000 * r['s_per_step_median']:.1f} | {r['images_per_s']:.1f} | "
            f"{r['achieved_tflop_per_s']:.3g} | {_pct(r.get('mfu_measured'))} | {_pct(r.get('mfu_nominal'))} | "
            + ("" if speedup is None else f"{speedup:.2f}")
            + " | "
            + " | ".join(_pct(share.get(p)) for p in ("data", "forward", "backward", "optimizer"))
            + " | "
            + ("" if "harness_overhead_pct" not in r else f"{r['harness_overhead_pct']:+.1f}%")
            + " | "
            + (f"{r['peak_memory_gib']:.2f}" if "peak_memory_gib" in r else "")
            + " |"
        )
    return md


def write_summary(out: Path, results: dict[str, dict | None], status: dict[str, str]) -> str:
    """Write OUT/summary.md from the run's results and files; returns its text."""
    first = next((r for r in results.values() if r), None)
    md = ["# issue 17 measurements", ""]
    if first:
        inp = first["input"]
        md += [f"- device: {where(first)}; torch {first['versions'].get('torch')}; git {first['git'].get('commit')}",
               f"- {first['model']}, image {inp['image_size']}, batch {inp['batch_size']}, text length "
               f"{inp['text_len']}, {first['amp']}; {first['steps']} timed steps after {first['warmup']}"]  # fmt: skip
    peak = _read(out / "peak.json")
    if peak:
        nom = peak["nominal"]
        md.append(
            f"- peak: measured {peak['measured']['tflops']:.3g} TFLOP/s ({peak['measured']['dtype']} "
            f"{peak['measured']['gemm']} GEMM)" + (f"; nominal {nom['tflops']:.0f} ({nom['model']})" if nom else "")
        )
    md += ["", "## Train step (each switch alone over 'before')", ""]
    md += step_table(results, "train-", "train-before")
    md += ["", "## Inference (forward only)", ""] + step_table(results, "infer-", "infer-eager")
    ddp = _read(out / "ddp" / "bench.json")
    if ddp:
        r = ddp["results"][0]
        md += ["", "## DDP (torchrun, world size 1)", "",
               f"{r['ddp']['backend']}, world size {r['ddp']['world_size']}: {1000 * r['s_per_step_median']:.1f} "
               f"ms/step, MFU {_pct(r.get('mfu_measured'))} of the measured peak (auto defaults)"]  # fmt: skip
    loader = _read(out / "loader.json")
    if loader:
        fastest = loader["fastest_step_images_per_s"]
        step = "none" if fastest is None else f"{fastest:.1f}"
        md += ["", "## Data loading", "", f"fastest measured train step: {step} images/s", "",
               "| data | workers | images/s | ms/image | loader / fastest step |",
               "|---|---:|---:|---:|---:|"]  # fmt: skip
        for row in loader["rows"]:
            ratio = "" if row["loader_over_step"] is None else f"{row['loader_over_step']:.2f}"
            md.append(f"| {row['data']} | {row['workers']} | {row['images_per_s']:.1f} | {row['ms_per_image']:.2f} "
                      f"| {ratio} |")  # fmt: skip
    sdpa = _read(out / "sdpa.json")
    if sdpa:
        md += ["", "## SDPA kernel for the encoder's attention", "", f"shape {sdpa['shape']}, {sdpa['dtype']}", "",
               "| mask | dispatched | flash | efficient | cudnn | math |", "|---|---|---|---|---|---|"]  # fmt: skip
        for case, c in sdpa["cases"].items():
            b = c["backends"]
            md.append(f"| {case} | {c['dispatched']} | " + " | ".join(
                b[k] if b[k] == "ok" else "no: " + b[k][:80] for k in ("flash", "efficient", "cudnn", "math")
            ) + " |")  # fmt: skip
        md += ["", "fwd + bwd ms: " + ", ".join(f"{k} {v:.2f}" for k, v in sdpa["ms_fwd_bwd"].items())]
    md += ["", "## Status", ""] + [f"- {k}: {v}" for k, v in status.items()]
    text = "\n".join(md) + "\n"
    atomic_write_text(out / "summary.md", text)
    return text
