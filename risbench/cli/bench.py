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
    "GFLOP/s: fvcore multiply-adds of one forward pass x 2 FLOPs x batch, x 3 for a train or pretrain step "
    "(backward = 2 forwards), over the median step time"
)
COLUMNS = ("batch", "ms/step", "images/s", "GFLOP/step", "GFLOP/s", "peak GiB (allocated)", "peak GiB (reserved)")


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
    if "peak_memory_gib" in result:
        lines.append(
            f"peak GPU memory: {result['peak_memory_gib']:.2f} GiB allocated by tensors, "
            f"{result['peak_reserved_gib']:.2f} GiB reserved by the caching allocator"
        )
    return lines


def where(result: dict) -> str:
    dev = result["device"]
    return dev["name"] if dev["type"] == "cuda" else f"CPU ({dev['torch_threads']} torch threads)"


def markdown(results: list[dict], command: str) -> str:
    """A table of the results (one row per batch size) under the conditions they share."""
    first = results[0]
    inp = first["input"]
    md = [
        f"# {first['model']}: {first['mode']} step speed and memory",
        "",
        f"- command: `{command}`",
        f"- device: {where(first)}; torch {first['versions'].get('torch')}; git {first['git'].get('commit')}"
        + (" (uncommitted changes)" if first["git"].get("dirty") else ""),
        f"- input: image {inp['image_size']}x{inp['image_size']}, text length {inp['text_len']}, random data "
        f"(no data loading); {first['amp']}; weights: {first['weights']}; {first['params_m']:.2f}M params",
        f"- ms/step: median of {first['steps']} steps after {first['warmup']} warm-up; " + STEP_MEANING[first["mode"]],
        f"- {FLOP_MEANING}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---:|" * len(COLUMNS),
    ]
    for r in results:
        mem = (f"{r['peak_memory_gib']:.2f}", f"{r['peak_reserved_gib']:.2f}") if "peak_memory_gib" in r else ("", "")
        cells = (
            str(r["input"]["batch_size"]),
            f"{r['s_per_step_median'] * 1000:.1f}",
            f"{r['images_per_s']:.1f}",
            f"{r['gflop_per_step']:.1f}",
            f"{r['achieved_gflop_per_s']:.1f}",
        )
        md.append("| " + " | ".join(cells + mem) + " |")
    return "\n".join(md) + "\n"


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
        amp: str = typer.Option("auto", "--amp", help="auto (bf16 on CUDA, fp32 on CPU), bf16 or off"),
        mode: str = typer.Option("train", "--mode", help="train (fwd + loss + bwd + AdamW) or infer (fwd)"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
        steps: int = typer.Option(20, "--steps", help="timed steps"),
        warmup: int = typer.Option(5, "--warmup", help="untimed steps first"),
        text_len: int = typer.Option(20, "--text-len", help="token ids per expression"),
        out: Path = typer.Option(None, "--out", help="folder for bench.json (with provenance) and bench.md"),
    ) -> None:
        """ms/step, images/s, achieved GFLOP/s and peak GPU memory of a training step, forward pass or
        pretraining step (random inputs, no data loading)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from risbench.benchmark import benchmark_pretrain_step, benchmark_step
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
                        pretrain, set_, batch_size=bs, device=device, steps=steps, warmup=warmup, on_step=on_step
                    )
                else:
                    result = benchmark_step(
                        model,
                        set_,
                        batch_size=bs,
                        amp=amp,
                        mode=mode,
                        device=device,
                        steps=steps,
                        warmup=warmup,
                        text_len=text_len,
                        on_step=on_step,
                    )
            results.append(result)
            for line in render(result):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
        if out is not None:
            target = ["--pretrain", pretrain] if pretrain else ["--model", model]
            args = ["risbench", "bench", *target, *[a for s in set_ for a in ("--set", s)]]
            args += [a for bs in batch_size for a in ("--batch-size", str(bs))]
            args += ["--amp", amp, "--mode", mode, "--steps", str(steps), "--warmup", str(warmup)]
            args += ["--text-len", str(text_len), "--out", str(out)]
            command = shlex.join(args)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "bench.json", {"command": command, "results": results})
            atomic_write_text(out / "bench.md", markdown(results, command))
