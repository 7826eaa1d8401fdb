"""`risbench bench`: seconds per training step (or forward pass), images/s and peak GPU memory of a model,
at one or more batch sizes; `--out DIR` writes bench.json (with provenance) and bench.md."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.console import Console

STEP_MEANING = {
    "train": "a train step is forward, the recipe's loss, backward, clipping and AdamW",
    "infer": "an infer step is one forward pass without gradients (eval mode)",
    "pretrain": "a pretrain step is the objective's forward (encoder and heads), backward, clipping and AdamW",
}
FLOP_MEANING = (
    "TFLOP/s: fvcore multiply-adds of one forward pass x 2 FLOPs x batch, x 3 for a train or pretrain step "
    "(backward = 2 forwards), over the median step time; MFU: that rate over the device's peak (measured: "
    "the best large-GEMM rate on this device, bf16 on CUDA / on CPU fp32, or bf16 under bf16 autocast; "
    "nominal: the datasheet's dense bf16)"
)
PHASE_MEANING = (
    "data / fwd / bwd / opt: shares of the timed steps' time (CUDA events on the GPU's timeline, or "
    "perf_counter on CPU) in copying the next batch to the device (and waiting for the loader), forward and "
    "loss, backward, clipping and the optimizer; harness vs plain: the same step as a plain PyTorch loop "
    "(batch already on the device), and the harness's extra time in percent of it"
)
COLUMNS = (
    "batch", "ms/step", "images/s", "TFLOP/s", "MFU (measured peak)", "MFU (nominal peak)", "data", "fwd", "bwd",
    "opt", "plain ms/step", "harness overhead", "peak GiB (allocated)", "peak GiB (reserved)",
)  # fmt: skip
SHORT = (
    "batch", "ms", "img/s", "TFLOP/s", "MFU meas", "MFU nom", "data", "fwd", "bwd", "opt", "plain ms", "overhead",
    "GiB alloc", "GiB resv",
)  # fmt: skip
DATA_WARN = 0.05  # data share of the step above which the GPU waits on the input pipeline


def _pct(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}%"


def cells(r: dict) -> tuple[str, ...]:
    """One table row of a result (empty cells where a number does not apply)."""
    share = r.get("phase_share", {})
    mem = (f"{r['peak_memory_gib']:.2f}", f"{r['peak_reserved_gib']:.2f}") if "peak_memory_gib" in r else ("", "")
    plain = r.get("plain_loop_s_per_step_median")
    overhead = r.get("harness_overhead_pct")
    return (
        str(r["input"]["batch_size"]),
        f"{r['s_per_step_median'] * 1000:.1f}",
        f"{r['images_per_s']:.1f}",
        f"{r['achieved_gflop_per_s'] / 1000:.3g}",
        _pct(r.get("mfu_measured")),
        _pct(r.get("mfu_nominal")),
        *(_pct(share.get(p)) for p in ("data", "forward", "backward", "optimizer")),
        "" if plain is None else f"{plain * 1000:.1f}",
        "" if overhead is None else f"{overhead:+.1f}%",
        *mem,
    )


def render(result: dict) -> list[str]:
    """The result as plain lines, each saying what its number is."""
    inp = result["input"]
    lines = [
        f"{result['model']} {' '.join(result['overrides'])}".strip() + f": {result['mode']} on {where(result)}",
        f"input: batch {inp['batch_size']}, image {inp['image_size']}x{inp['image_size']}, text length "
        f"{inp['text_len']}; {result['amp']}; weights: {result['weights']}; {result['params_m']:.2f}M params",
        f"{result['s_per_step_median'] * 1000:.1f} ms/step (median of {result['steps']} after {result['warmup']} "
        f"warm-up), {result['images_per_s']:.1f} images/s",
        f"{result['gflop_per_step']:.1f} GFLOP per step ({result['gmacs_per_image']:.3f} GMACs per image forward): "
        f"{result['achieved_gflop_per_s']:.1f} GFLOP/s achieved",
    ]
    if "peak" in result:
        meas, nom = result["peak"]["measured"], result["peak"]["nominal"]
        line = (
            f"MFU {_pct(result['mfu_measured'])} of the measured peak {meas['tflops']:.2f} TFLOP/s ({meas['dtype']} "
            f"{meas['gemm']} GEMM, {'cached in ' + result['peak']['cache'] if meas['cached'] else 'measured now'})"
        )
        if "peak_remeasured" in result:
            line += f" [measured again: {result['peak_remeasured']}]"
        if nom:
            line += f"; {_pct(result['mfu_nominal'])} of the nominal {nom['tflops']:.0f} TFLOP/s ({nom['model']})"
        lines.append(line)
    if "peak_memory_gib" in result:
        lines.append(
            f"peak GPU memory: {result['peak_memory_gib']:.2f} GiB allocated by tensors, "
            f"{result['peak_reserved_gib']:.2f} GiB reserved by the caching allocator"
        )
    return lines


def data_warning(result: dict, threshold: float = DATA_WARN) -> str | None:
    """A warning when the data phase takes more than `threshold` of the step (the device waits for input)."""
    share = result.get("phase_share", {}).get("data", 0.0)
    if share <= threshold:
        return None
    return (
        f"warning: batch {result['input']['batch_size']}: the device waits on the input pipeline, data is "
        f"{100 * share:.1f}% of the step (over {100 * threshold:.0f}%); raise train.num_workers (--workers), "
        f"turn on train.speed.pin_memory / prefetch_factor, or make decoding cheaper"
    )


def where(result: dict) -> str:
    dev = result["device"]
    return dev["name"] if dev["type"] == "cuda" else f"CPU ({dev['torch_threads']} torch threads)"


def markdown(results: list[dict], command: str) -> str:
    """A table of the results (one row per batch size) under the conditions they share."""
    first = results[0]
    inp = first["input"]
    speed = {k: v for k, v in first.get("speed", {}).items()}
    md = [
        f"# {first['model']}: {first['mode']} step speed and memory",
        "",
        f"- command: `{command}`",
        f"- device: {where(first)}; torch {first['versions'].get('torch')}; git {first['git'].get('commit')}"
        + (" (uncommitted changes)" if first["git"].get("dirty") else ""),
        f"- input: image {inp['image_size']}x{inp['image_size']}, text length {inp['text_len']}, data: "
        f"{first.get('data', 'random')}; {first['amp']}; weights: {first['weights']}; {first['params_m']:.2f}M params",
        f"- ms/step: median of {first['steps']} steps after {first['warmup']} warm-up; " + STEP_MEANING[first["mode"]],
        f"- {FLOP_MEANING}",
        f"- {PHASE_MEANING}",
    ]
    if speed:
        md.append("- train.speed: " + ", ".join(f"{k}={v}" for k, v in speed.items()))
    if "peak" in first:
        meas, nom = first["peak"]["measured"], first["peak"]["nominal"]
        md.append(
            f"- peak: measured {meas['tflops']:.2f} TFLOP/s ({meas['dtype']} {meas['gemm']} GEMM, torch "
            f"{meas['torch']}, {meas['measured_at']})"
            + (f"; nominal {nom['tflops']:.0f} TFLOP/s ({nom['model']}, dense {nom['dtype']})" if nom else "")
        )
    md += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    md += ["| " + " | ".join(cells(r)) + " |" for r in results]
    return "\n".join(md) + "\n"


def rich_table(results: list[dict]):
    """The same table for the terminal."""
    from rich.table import Table

    rows = [cells(r) for r in results]
    keep = [i for i in range(len(COLUMNS)) if any(row[i] for row in rows)]
    title = f"{results[0]['model']}: {results[0]['mode']} on {where(results[0])}"
    table = Table(*(SHORT[i] for i in keep), title=title)
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        model: str = typer.Option("shared-ris-b", "--model", "-m", help="model preset name or YAML path"),
        set_: list[str] = typer.Option([], "--set", help="model override, e.g. fpn.name=cris (repeatable)"),
        batch_size: list[int] = typer.Option(
            [], "--batch-size", help="images per step, one process (repeatable); default 8, or the pretraining batch"
        ),
        pretrain: str = typer.Option(
            None, "--pretrain", help="time a pretraining config's step instead (registry/pretrain/ name or YAML)"
        ),
        amp: str = typer.Option(
            "auto",
            "--amp",
            help="auto (bf16 on CUDA, fp32 on CPU), bf16, bf16_if_native (bf16 where the device computes it "
            "natively) or off; --pretrain: the config's train.amp",
        ),
        mode: str = typer.Option("train", "--mode", help="train (fwd + loss + bwd + AdamW) or infer (fwd)"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
        steps: int = typer.Option(20, "--steps", help="timed steps"),
        warmup: int = typer.Option(5, "--warmup", help="untimed steps first"),
        text_len: int = typer.Option(20, "--text-len", help="token ids per expression"),
        speed: list[str] = typer.Option(
            [], "--speed", help="a train.speed switch, e.g. compile=true or fused_adamw=false (repeatable)"
        ),
        data: str = typer.Option(
            None, "--data", help="feed the steps from this dataset preset's training loader (default: random batch)"
        ),
        workers: int = typer.Option(0, "--workers", help="DataLoader workers with --data (train.num_workers)"),
        baseline: bool = typer.Option(
            True, "--baseline/--no-baseline", help="also time the same step as a plain PyTorch loop"
        ),
        remeasure_peak: bool = typer.Option(
            False, "--remeasure-peak", help="measure the device's GEMM peak again instead of using the cached one"
        ),
        out: Path = typer.Option(None, "--out", help="folder for bench.json (with provenance) and bench.md"),
    ) -> None:
        """ms/step, images/s, achieved TFLOP/s, MFU, the data / forward / backward / optimizer shares, the
        plain-loop baseline and peak GPU memory of a training step or forward pass (random inputs unless
        --data), or of a pretraining step."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from risbench.benchmark import benchmark_step
        from risbench.benchmark_pretrain import benchmark_pretrain_step
        from risbench.io import atomic_write_json, atomic_write_text

        console = Console()
        results = []
        for bs in batch_size or [None if pretrain else 8]:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                label = "the pretraining batch" if bs is None else f"batch {bs}"
                task = progress.add_task(f"{label}: building the model", total=warmup + steps)

                def on_step(
                    phase: str, done: int, total: int, label: str = label, task=task, progress=progress
                ) -> None:
                    progress.update(task, description=f"{label}: {phase} step {done}/{total}", advance=1)

                if pretrain:
                    result = benchmark_pretrain_step(
                        pretrain, set_, batch_size=bs, device=device, steps=steps, warmup=warmup, on_step=on_step,
                        remeasure_peak=remeasure_peak,
                    )  # fmt: skip
                else:
                    result = benchmark_step(
                        model, set_, batch_size=bs, amp=amp, mode=mode, device=device, steps=steps, warmup=warmup,
                        text_len=text_len, speed=speed, data=data, num_workers=workers, baseline=baseline,
                        remeasure_peak=remeasure_peak, on_step=on_step,
                    )  # fmt: skip
                remeasure_peak = False  # once per command
            results.append(result)
            for line in render(result):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
        console.print(rich_table(results))
        for r in results:
            warning = data_warning(r)
            if warning:
                console.print(warning, style="yellow", highlight=False, markup=False, soft_wrap=True)
        if out is not None:
            target = ["--pretrain", pretrain] if pretrain else ["--model", model]
            args = ["risbench", "bench", *target, *[a for s in set_ for a in ("--set", s)]]
            args += [a for bs in batch_size for a in ("--batch-size", str(bs))]
            args += [] if pretrain else ["--amp", amp, "--mode", mode]
            args += ["--steps", str(steps), "--warmup", str(warmup)]
            args += ["--text-len", str(text_len), *[a for s in speed for a in ("--speed", s)]]
            if data:
                args += ["--data", data, "--workers", str(workers)]
            if not baseline:
                args += ["--no-baseline"]
            args += ["--out", str(out)]
            command = shlex.join(args)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "bench.json", {"command": command, "results": results})
            atomic_write_text(out / "bench.md", markdown(results, command))
