"""Benchmark (not a test): SynthRef generation speed on one core.

    python scripts/bench_synthref.py [--n 2000] [--image-size 128] [--flavour refcoco ...]

For each flavour it times, pinned to one CPU core with one torch thread (per wall-clock second and per CPU
second of the process, which is the fair figure when other work shares the machine):
  scenes/s   scene description + expressions only (no pixels)
  renders/s  scene + numpy rendering
  samples/s  full training samples from the dataset (random order, so every sample is a new scene):
             scene + render + resize/normalise to tensors, as a DataLoader worker produces them
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from risbench.data.build import build_dataset
from risbench.data.synthref import SceneSource, SynthRefConfig
from risbench.data.synthref_render import render


def rate(fn, n: int, rounds: int) -> tuple[float, float]:
    """Items per wall-clock second and per CPU second of this process, over `rounds` rounds of n // rounds
    items each (different items every round); the best round, as timeit reports, since other work sharing
    the machine only ever slows a round down."""
    per = max(n // rounds, 1)
    best_wall = best_cpu = 0.0
    for r in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(r * per, (r + 1) * per):
            fn(i)
        best_wall = max(best_wall, per / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, per / max(time.process_time() - cpu, 1e-9))
    return best_wall, best_cpu


def bench(flavour: str, n: int, image_size: int, negative_fraction: float, rounds: int) -> dict:
    common = {"flavour": flavour, "image_size": image_size, "negative_fraction": negative_fraction}
    cfg = SynthRefConfig(num_train=3 * n, **common)
    scenes = rate(SceneSource(cfg, "train").scene, n, rounds)
    source = SceneSource(cfg, "train")
    renders = rate(lambda i: render(source.scene(n + i), image_size), n, rounds)
    ds = build_dataset(
        {"name": "synthref", "num_train": 3 * n, **common},
        "train",
        image_size=image_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        train=True,
    )
    order = np.random.default_rng(0).permutation(len(ds))[:n]
    samples = rate(lambda i: ds[int(order[i])], n, rounds)
    row = {"flavour": flavour, "image_size": image_size, "n": n, "rounds": rounds}
    for name, (wall, cpu) in (("scenes", scenes), ("renders", renders), ("samples", samples)):
        row[f"{name}_per_s"] = round(wall)
        row[f"{name}_per_cpu_s"] = round(cpu)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="samples per measurement")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--flavour", nargs="+", default=["refcoco", "refcoco+", "refcocog"])
    ap.add_argument("--negative-fraction", type=float, default=0.0)
    ap.add_argument("--rounds", type=int, default=10, help="timing rounds; the best is reported")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    print(
        f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"numpy {np.__version__}, torch {torch.__version__}, one core, load {os.getloadavg()[0]:.1f}"
    )
    for flavour in args.flavour:
        print(json.dumps(bench(flavour, args.n, args.image_size, args.negative_fraction, args.rounds)))


if __name__ == "__main__":
    main()
