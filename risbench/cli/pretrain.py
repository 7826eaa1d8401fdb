"""`risbench pretrain CONFIG`: pretrain an encoder without masks (its family's objective), or reuse the
cached or committed artifact with the same config hash."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain_cmd(
        config: str = typer.Argument(..., help="a preset in registry/pretrain/ or a YAML file"),
        set_: list[str] = typer.Option([], "--set", help="override, e.g. train.max_steps=100"),
        out: Path = typer.Option(
            None, "--out", help="artifact folder (default: the cache, .cache/pretrain/<name>-<hash>/)"
        ),
        quiet: bool = typer.Option(False, "--quiet", help="plain log lines, no progress bar"),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="continue an interrupted pretraining"),
    ) -> None:
        """Pretrain an encoder on image-text pairs (no masks) and export it in its official key layout."""
        from risbench.spec import apply_overrides
        from risbench.train.config import normalize_raw
        from risbench.train.pretrain import pretrain
        from risbench.train.pretrain_config import load_pretrain_config

        raw = apply_overrides(normalize_raw(load_pretrain_config(config)), set_)
        command = " ".join(["risbench pretrain", config, *(f"--set {item}" for item in set_)])
        art = pretrain(raw, out, quiet=quiet, resume=resume, command=command)
        prov = art.provenance
        final = ", ".join(f"{k} {v:.4g}" for k, v in prov.final.items() if isinstance(v, (int, float)))
        took = f"{prov.objective}, {prov.steps} steps, {prov.train_seconds or 0:.0f} s"
        print(f"pretrained {prov.name} ({took}): {final}")
        if prov.held_out:
            ev = prov.held_out
            parts = [f"{k} {ev['image'][k]:.4g} (swapped images {ev['swapped_image'][k]:.4g})" for k in ev["image"]]
            print(f"held out ({ev['samples']} {ev['split']} pairs): " + ", ".join(parts))
        print(f"artifact: {art.directory}")
        for key, value in art.encoder_options.items():
            print(f"  --set model.encoder.{key}={value}")
        print(f"  --set tokenizer.path={art.tokenizer_path}")
