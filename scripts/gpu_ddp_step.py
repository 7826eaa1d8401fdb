"""The harness's train step inside DistributedDataParallel, under torchrun (started by scripts/gpu_bench.py).

    torchrun --standalone --nproc-per-node 1 scripts/gpu_ddp_step.py --out DIR [--smoke]

Starts the process group (nccl on CUDA, gloo on CPU) even at world size 1, wraps the model as
`risbench.train.distributed.wrap_ddp` does for a multi-process run (static graph, the device id), and times
the step with `risbench bench`'s machinery; writes DIR/bench.{json,md} with the world size and backend.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from risbench.benchmark import benchmark_step  # noqa: E402
from risbench.cli.bench import markdown  # noqa: E402
from risbench.io import atomic_write_json, atomic_write_text  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    from gpu_bench import TINY

    cuda = torch.cuda.is_available() and not args.smoke
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if cuda else None, static_graph=True
        )

    model, sets = ("shared-ris-tiny", TINY) if args.smoke else ("shared-ris-b", [])
    batch, steps, warmup = (2, 2, 1) if args.smoke else (32, 15, 5)
    r = benchmark_step(
        model, sets, batch_size=batch, device=str(dev), steps=steps, warmup=warmup, wrap=wrap, baseline=True
    )
    r["ddp"] = {"world_size": dist.get_world_size(), "backend": dist.get_backend()}
    if dist.get_rank() == 0:
        command = f"torchrun --standalone --nproc-per-node 1 scripts/gpu_ddp_step.py{' --smoke' if args.smoke else ''}"
        atomic_write_json(args.out / "bench.json", {"command": command, "results": [r]})
        atomic_write_text(args.out / "bench.md", markdown([r], command))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
