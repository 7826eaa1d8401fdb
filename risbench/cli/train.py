"""`risbench train CONFIG`, `risbench eval RUN_DIR`, `risbench predict RUN_DIR IMAGE "expression"`.

eval / predict also take a run config file with `--checkpoint PATH` (and `--set`): a released model's weights
(risbench.train.weights: risbench's layout, DETRIS's or RefSegformer's), evaluated with that config's data and
settings."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from risbench.errors import RisbenchError


def run_dir_for(config_path: Path, cfg: dict, override: Path | None) -> Path:
    """--run-dir, else the config's run_dir, else the folder of a run's own config.yaml, else runs/<stem>."""
    if override is not None:
        return override
    if cfg.get("run_dir"):
        return Path(cfg["run_dir"])
    if config_path.name == "config.yaml":
        return config_path.parent
    return Path("runs") / config_path.stem


def _fmt_split(name: str, m: dict) -> str:
    parts = [f"{name} ({m['resolution']} res, thr {m['threshold']:g}, {m['num_sentences']} sentences):"]
    parts += [f"oIoU {m['oIoU']:.2f}", f"mIoU {m['mIoU']:.2f}"]
    parts += [f"{k} {m[k]:.2f}" for k in ("P@0.5", "P@0.7", "P@0.9") if k in m]
    if m.get("rris_r") is not None:
        parts += [f"rris_r {m['rris_r']:.2f}", f"rris_rIoU {m['rris_rIoU']:.2f}"]
    return " ".join(parts)


def _check_threshold(threshold: float | None) -> None:
    from risbench.train.config import check_threshold

    if threshold is not None:
        try:
            check_threshold(threshold, "--threshold")
        except ValueError as exc:
            raise RisbenchError(str(exc)) from None


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        config: Path = typer.Argument(..., help="run config (YAML; include: works)"),
        set_: list[str] = typer.Option([], "--set", help="override, e.g. train.max_steps=20 or model.fpn.dim=64"),
        run_dir: Path = typer.Option(
            None, "--run-dir", help="run folder (default: run_dir in the config, else runs/<name>)"
        ),
        quiet: bool = typer.Option(
            False, "--quiet", help="plain log lines, no progress bar (automatic on CI / no TTY)"
        ),
        resume: bool = typer.Option(
            True, "--resume/--no-resume", help="continue an interrupted run (default) or start over"
        ),
    ) -> None:
        """Train one run config (under torchrun: one DDP process group), then evaluate it."""
        from risbench.spec import load_config
        from risbench.train.api import train_run
        from risbench.train.config import apply_run_overrides
        from risbench.train.distributed import cleanup_distributed, env_world_size

        cfg = apply_run_overrides(load_config(config), set_)
        target = run_dir_for(config, cfg, run_dir)
        try:
            metrics = train_run(cfg, target, quiet=quiet, resume=resume)
        finally:
            if env_world_size() > 1:
                cleanup_distributed()
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            for name, m in (metrics.get("splits") or {}).items():
                print(_fmt_split(name, m))
            print(f"run: {target}")

    @app.command("eval")
    def eval_cmd(
        run_dir: Path = typer.Argument(..., help="a run folder, or a run config .yaml with --checkpoint PATH"),
        split: list[str] = typer.Option([], "--split", help="split(s) to evaluate (default: the config's eval.splits)"),
        threshold: float = typer.Option(None, "--threshold", help="foreground when sigmoid > threshold (default 0.35)"),
        resolution: str = typer.Option(None, "--resolution", help="original | input"),
        checkpoint: str = typer.Option(
            "auto",
            "--checkpoint",
            help="auto | best | last | a path (risbench's .pt, a released DETRIS .pth or RefSegformer ckpt.pth)",
        ),
        set_: list[str] = typer.Option([], "--set", help="KEY=VALUE on a run config file (not on a run folder)"),
        swap_text: bool = typer.Option(False, "--swap-text", help="give every sample another sample's expression"),
        max_samples: int = typer.Option(None, "--max-samples", help="evaluate only the first N sentences"),
        as_json: bool = typer.Option(False, "--json", help="print the full result as JSON"),
        per_sentence: bool = typer.Option(
            False, "--per-sentence", help="also write one CSV row per sentence (IoU, areas, expression)"
        ),
    ) -> None:
        """Evaluate a trained run (oIoU, mIoU, P@X, IoU by size, R-RIS r/rIoU); writes RUN_DIR/evals/*.json."""
        from risbench.train.reeval import evaluate_run

        if resolution is not None and resolution not in ("original", "input"):
            raise RisbenchError(f"--resolution must be original or input, got '{resolution}'")
        _check_threshold(threshold)
        result = evaluate_run(
            run_dir,
            splits=list(split) or None,
            threshold=threshold,
            resolution=resolution,
            swap_text=swap_text,
            checkpoint=checkpoint,
            max_samples=max_samples,
            per_sentence=per_sentence,
            overrides=list(set_),
        )
        if as_json:
            print(json.dumps(result, indent=2))
            return
        for name, m in result["splits"].items():
            print(_fmt_split(name, m) + (" [expressions swapped]" if swap_text else ""))
        if result.get("written_to"):
            print(f"wrote {result['written_to']}")

    @app.command("predict")
    def predict_cmd(
        run_dir: Path = typer.Argument(..., help="a run folder, or a run config .yaml with --checkpoint PATH"),
        image: Path = typer.Argument(..., help="an image file"),
        expression: str = typer.Argument(..., help="the referring expression"),
        out: Path = typer.Option(Path("overlay.png"), "--out", help="where to write the overlay PNG"),
        threshold: float = typer.Option(None, "--threshold"),
        checkpoint: str = typer.Option(
            "auto",
            "--checkpoint",
            help="auto | best | last | a path (risbench's .pt, a released DETRIS .pth or RefSegformer ckpt.pth)",
        ),
        set_: list[str] = typer.Option([], "--set", help="KEY=VALUE on a run config file (not on a run folder)"),
    ) -> None:
        """Segment one expression in one image; writes the mask overlaid on the image."""
        from risbench.train.predict import predict

        _check_threshold(threshold)
        if not expression.strip():
            raise RisbenchError(
                'the expression is empty; give the words that refer to the object, e.g. "the red circle"'
            )
        r = predict(run_dir, image, expression, out, threshold=threshold, checkpoint=checkpoint, overrides=list(set_))
        print(f"wrote {r['out']} (mask covers {100 * r['mask_fraction']:.1f}% of the image; {r['checkpoint']})")
