"""Every measurement of issue 17 in one run, written to files: for a lent GPU (about 8 minutes on an H200).

    python scripts/gpu_bench.py --out-root "$OUT/results/bench"   # on the GPU machine
    python scripts/gpu_bench.py --smoke --out-root /tmp/bench      # on CPU: tiny model, few steps (~2 min idle)

Writes OUT_ROOT/<device>/: peak.json (GEMM peak, measured again), sdpa.json (the kernel SDPA dispatches
for shared-ris-b's attention with the boolean padding mask, an additive mask and none, and its time),
train-<variant>/bench.{json,md} (shared-ris-b, bf16, 480 px, batch 32: the harness as it was ('before'),
the auto defaults, every train.speed switch alone over 'before', and all of them), infer-*/ (batch 32,
eager and compiled), loader.json (SynthRef and REFER-layout JPEG loaders: images/s and ms per image at 0
and N workers, against the fastest step), ddp/ (the step in DistributedDataParallel over nccl, world size 1,
under torchrun) and summary.md. Each measurement is tried alone: a failure is recorded and the rest run;
past --budget-s the remaining ones are skipped, saying so.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import torch  # noqa: E402

from risbench.benchmark import benchmark_step  # noqa: E402
from risbench.cli.bench import markdown  # noqa: E402
from risbench.io import atomic_write_json, atomic_write_text  # noqa: E402

TINY = ["encoder.image_size=32", "encoder.embed_dim=32", "encoder.num_heads=2", "encoder.depth=2",
        "encoder.out_indices=[1,2]", "fpn.dim=32", "fpn.num_heads=2", "decoder.num_heads=2",
        "decoder.head.conv_dim=16"]  # fmt: skip
BEFORE = ["fused_adamw=false", "host_sync=step", "pin_memory=false"]  # the step as it was before issue 17
SWITCHES = {  # each alone, over BEFORE
    "fused_adamw": ["fused_adamw=true"],
    "host_sync_log": ["host_sync=log"],
    "pin_memory": ["pin_memory=true"],
    "channels_last": ["channels_last=true"],
    "drop_unpadded_mask": ["drop_unpadded_mask=true"],
    "compile": ["compile=true"],
    "compile_loss": ["compile_loss=true"],
    "activation_checkpointing": ["activation_checkpointing=true"],
}
WITH_BASELINE = {"train-before", "train-defaults", "train-all", "infer-eager", "infer-compiled"}  # plain loop too
ALL_ON = ["fused_adamw=true", "host_sync=log", "pin_memory=true", "channels_last=true", "drop_unpadded_mask=true",
          "compile=true", "compile_loss=true"]  # fmt: skip


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Session:
    """The run's settings, its clock and what it has written."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke = args.smoke
        self.dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
        name = torch.cuda.get_device_name(self.dev) if self.dev.type == "cuda" else "cpu-smoke"
        self.out = Path(args.out_root) / slug(name)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0, self.budget = time.perf_counter(), args.budget_s
        self.model, self.sets = ("shared-ris-tiny", TINY) if self.smoke else ("shared-ris-b", [])
        self.batch = 2 if self.smoke else 32
        self.steps, self.warmup = (2, 1) if self.smoke else (15, 5)
        self.compile_extra = ["compile_backend=aot_eager"] if self.smoke else []  # inductor: minutes on 2 cores
        self.status: dict[str, str] = {}
        self.macs: int | None = None

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def attempt(self, name: str, fn, need_s: float = 0.0):
        """Run `fn()`; record ok / skipped / the error; never raise."""
        if self.left() < need_s:
            self.status[name] = f"skipped: {self.left():.0f} s of the budget left, needs ~{need_s:.0f} s"
            print(f"[{name}] {self.status[name]}", flush=True)
            return None
        t = time.perf_counter()
        try:
            out = fn()
            self.status[name] = f"ok ({time.perf_counter() - t:.0f} s)"
            return out
        except Exception as exc:  # one failed measurement must not lose the others
            self.status[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            atomic_write_text(self.out / f"{name}.error.txt", traceback.format_exc())
        finally:
            print(f"[{name}] {self.status.get(name)} ({time.perf_counter() - self.t0:.0f} s in)", flush=True)
        return None

    def bench(self, name: str, mode: str, speed: list[str], **kw) -> dict:
        """One `risbench bench` measurement, written as OUT/<name>/bench.{json,md}."""
        if any(s.startswith("compile") for s in speed):
            speed = speed + self.compile_extra
        kw.setdefault("baseline", name in WITH_BASELINE)
        r = benchmark_step(
            self.model, self.sets, batch_size=self.batch, amp="auto", mode=mode, device=str(self.dev),
            steps=self.steps, warmup=self.warmup, speed=speed, macs=self.macs, **kw,
        )  # fmt: skip
        self.macs = int(r["gmacs_per_image"] * 1e9)
        command = (
            f"scripts/gpu_bench.py{' --smoke' if self.smoke else ''} ({name}: --mode {mode} "
            + " ".join(f"--speed {s}" for s in speed)
            + ")"
        )
        folder = self.out / name
        atomic_write_json(folder / "bench.json", {"command": command, "results": [r]})
        atomic_write_text(folder / "bench.md", markdown([r], command))
        return r


def peak_and_sdpa(s: Session) -> None:
    from risbench.peak import device_peak
    from risbench.sdpa_check import check_attention

    name = torch.cuda.get_device_name(s.dev) if s.dev.type == "cuda" else "cpu"
    atomic_write_json(s.out / "peak.json", device_peak(s.dev, name, remeasure=True))
    dtype = torch.bfloat16 if s.dev.type == "cuda" else torch.float32
    shape = (2, 2, 24, 16, 8, 3) if s.smoke else (s.batch, 12, 1 + 30 * 30 + 20, 64, 20, 8)  # BEiT-3 B at 480
    report = check_attention(*shape, s.dev, dtype)
    report["ms_fwd_bwd"] = sdpa_times(*shape, s.dev, dtype)
    atomic_write_json(s.out / "sdpa.json", report)


def sdpa_times(batch, heads, tokens, head_dim, text_len, padded, dev, dtype) -> dict[str, float]:
    """Milliseconds of one SDPA forward + backward at the shape, per mask case (default dispatch)."""
    import torch.nn.functional as F

    from risbench.step_timing import summarize, time_phased

    q, k, v = (torch.randn(batch, heads, tokens, head_dim, device=dev, dtype=dtype, requires_grad=True)
               for _ in range(3))  # fmt: skip
    keep = torch.ones(batch, tokens, dtype=torch.bool, device=dev)
    keep[:, tokens - padded :] = False
    masks = {"bool mask": keep[:, None, None, :], "no mask": None}
    out = {}
    for name, mask in masks.items():

        def step(clock, mask=mask):
            clock.start()
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()

        out[name] = 1000 * summarize(time_phased(step, dev, 10, 3))["s_per_step_median"]
    return out


def loaders(s: Session, fastest_step_images_per_s: float | None) -> None:
    """Images/s of the SynthRef and REFER-JPEG training loaders alone, at 0 and N workers."""
    from risbench.loader_bench import build_train_loader, loader_throughput
    from risbench.models.segmenter import build_segmenter
    from risbench.spec import resolve_model_spec

    net = build_segmenter(resolve_model_spec(s.model, s.sets))
    refer = s.out / "refer-jpeg"
    n_train = 8 if s.smoke else 512
    cmd = [sys.executable, "-m", "risbench.cli.main", "data", "synth", "--format", "refer", "--image-format", "jpeg",
           "--image-size", "64" if s.smoke else "640", "--num-train", str(n_train), "--num-val", "2", "--num-test", "2",
           "--flavour", "refcoco+", "--out", str(refer)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    datasets = {"synthref (rendered on the fly)": "synthref-refcoco+",
                "REFER-layout JPEG 640 px": str(refer / "synthref-refcoco+.yaml")}  # fmt: skip
    workers = [0, 1] if s.smoke else [0, min(8, os.cpu_count() or 1)]
    n_batches = 2 if s.smoke else 8
    rows = []
    for label, data in datasets.items():
        for w in workers:
            batches = build_train_loader(data, net, batch_size=s.batch, text_len=20, num_workers=w, device=s.dev)
            r = loader_throughput(batches, s.batch, n_batches, warmup=1 if w == 0 else 2)
            keeps_up = None if not fastest_step_images_per_s else r["images_per_s"] / fastest_step_images_per_s
            rows.append({"data": label, "workers": w, **r, "loader_over_step": keeps_up})
            print(f"  loader {label}, {w} workers: {r['images_per_s']:.0f} images/s", flush=True)
    atomic_write_json(s.out / "loader.json", {"fastest_step_images_per_s": fastest_step_images_per_s, "rows": rows})


def ddp(s: Session) -> None:
    """The harness step in DistributedDataParallel over nccl (gloo on CPU), world size 1, under torchrun."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "1",
        str(ROOT / "scripts" / "gpu_ddp_step.py"),
        "--out",
        str(s.out / "ddp"),
    ] + (["--smoke"] if s.smoke else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(60, int(s.left())))  # fmt: skip
    atomic_write_text(s.out / "ddp" / "torchrun.log", proc.stdout[-20000:] + proc.stderr[-20000:])
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: see ddp/torchrun.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 2 steps: checks the script")
    parser.add_argument("--out-root", default="results/bench", help="results go to OUT_ROOT/<device>/")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip what is left after this many seconds")
    s = Session(parser.parse_args(argv))
    print(f"writing to {s.out}", flush=True)
    s.attempt("peak_sdpa", lambda: peak_and_sdpa(s))
    results = {}
    results["train-before"] = s.attempt("train-before", lambda: s.bench("train-before", "train", BEFORE))
    results["train-all"] = s.attempt("train-all", lambda: s.bench("train-all", "train", ALL_ON), 120)
    results["train-defaults"] = s.attempt("train-defaults", lambda: s.bench("train-defaults", "train", []), 30)
    for mode_name, speed in (("infer-eager", []), ("infer-compiled", ["compile=true"])):
        results[mode_name] = s.attempt(mode_name, lambda m=mode_name, sp=speed: s.bench(m, "infer", sp), 60)
    fastest = max((r["images_per_s"] for k, r in results.items() if k.startswith("train") and r), default=None)
    s.attempt("loader", lambda: loaders(s, fastest), 60)
    s.attempt("ddp", lambda: ddp(s), 60)
    for name, extra in SWITCHES.items():
        key = f"train-{name}"
        need = 90 if "compile" in name else 25
        results[key] = s.attempt(key, lambda k=key, e=extra: s.bench(k, "train", BEFORE + e), need)
    data_key = "train-defaults-synthref-loader"
    workers = 1 if s.smoke else min(8, os.cpu_count() or 1)
    results[data_key] = s.attempt(
        data_key, lambda: s.bench(data_key, "train", [], data="synthref-refcoco+", num_workers=workers), 40
    )
    atomic_write_json(s.out / "status.json", s.status)
    from gpu_summary import write_summary  # scripts/gpu_summary.py

    write_summary(s.out, results, s.status)
    print(f"done in {time.perf_counter() - s.t0:.0f} s: {s.out / 'summary.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
