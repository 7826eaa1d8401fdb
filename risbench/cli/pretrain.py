"""`risbench pretrain CONFIG`: pretrain an encoder without masks (its family's objective), or reuse the
cached or committed artifact with the same config hash."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `risbench pretrain` and `risbench pretrain-probe` to `app`."""

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

    _register_probe(app)


def _register_probe(app: typer.Typer) -> None:
    @app.command("pretrain-probe")
    def probe_cmd(
        artifact: Path = typer.Argument(..., help="a pretrained artifact folder (pretrained/<name>-<hash>/)"),
        samples: int = typer.Option(500, "--samples", help="held-out object captions (the data's val split)"),
        out: Path = typer.Option(None, "--out", help="also write the result as JSON"),
    ) -> None:
        """Which word classes (colour, shape, size) a pretrained encoder reads from the pixels: masked-word
        accuracy per class on held-out object captions, with the own and with a swapped image."""
        import json

        from rich.console import Console
        from rich.table import Table

        from risbench.io import atomic_write_text
        from risbench.train.probe import probe

        if not (artifact / "pretrain.json").is_file():
            from risbench.errors import RisbenchError

            raise RisbenchError(
                f"{artifact}: no pretrain.json; expected a finished artifact folder from risbench pretrain "
                "(pretrained/<name>-<hash>/ or .cache/pretrain/<name>-<hash>/)"
            )
        result = probe(artifact, samples=samples)
        result["command"] = " ".join(["risbench pretrain-probe", str(artifact), "--samples", str(samples)])
        table = Table(
            title=f"{result['artifact']}: masked-word accuracy (%) on {result['samples']} held-out object captions "
            f"({result['split']}), one class masked at a time, argmax over the class's words",
            title_justify="left",
        )
        columns = ("class", "meanings", "chance", "own image", "swapped image", "masked words", "left out")
        rows = [
            [kind, r["meanings"], r["chance"], r["own_image"], r["swapped_image"], r["masked"]]
            + [", ".join(r["left_out"]) or "-"]
            for kind, r in result["classes"].items()
        ]
        for col in columns:
            table.add_column(col, justify="left" if col == "class" else "right")
        for row in rows:
            table.add_row(*map(str, row))
        Console().print(table)
        if out is not None:  # the JSON, and beside it the same table as Markdown
            atomic_write_text(out, json.dumps(result, indent=2) + "\n")
            lines = [
                f"{table.title}",
                "",
                "| " + " | ".join(columns) + " |",
                "|---" + "|---:" * (len(columns) - 1) + "|",
            ]
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
            lines += ["", f"- command: {result['command']}", f"- git commit: {result['provenance']['git']['commit']}"]
            atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
            print(f"wrote {out} and {out.with_suffix('.md')}")
