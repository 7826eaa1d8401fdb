"""`risbench data synth|check|stats`: export SynthRef, verify a REFER layout, describe SynthRef."""

from __future__ import annotations

from pathlib import Path

import typer

from risbench.errors import RisbenchError


def _data_config(dataset: str, root: str | None) -> dict:
    from risbench.data.build import resolve_data_config

    cfg = resolve_data_config(dataset)
    if root is not None:
        if cfg["name"] != "refer":
            raise RisbenchError(f"--root applies to REFER-format datasets, not '{cfg['name']}' ({dataset})")
        cfg["root"] = root
    return cfg


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(
        help="Datasets: export SynthRef, check a REFER layout, SynthRef statistics and error analysis.",
        no_args_is_help=True,
    )
    app.add_typer(data_app, name="data")

    @data_app.command("synth")
    def synth_cmd(
        out: Path = typer.Option(..., "--out", help="output folder"),
        fmt: str = typer.Option("refer", "--format", help="output format (refer)"),
        flavour: list[str] = typer.Option(["refcoco"], "--flavour", help="refcoco | refcoco+ | refcocog (repeatable)"),
        num_train: int = typer.Option(None, "--num-train", help="training scenes (default: the preset's)"),
        num_val: int = typer.Option(None, "--num-val"),
        num_test: int = typer.Option(None, "--num-test"),
        seed: int = typer.Option(None, "--seed"),
        negative_fraction: float = typer.Option(None, "--negative-fraction", help="robust setting: negatives"),
        image_size: int = typer.Option(None, "--image-size"),
        image_format: str = typer.Option("png", "--image-format", help="png (lossless) or jpeg (quality 90)"),
    ) -> None:
        """Export SynthRef to disk in the REFER layout (PNG or JPEG images, refs(unc).p, instances.json with RLE)."""
        from risbench.data.build import dataset_class_and_config
        from risbench.data.export import export_refer

        if fmt != "refer":
            raise RisbenchError(f"--format: only 'refer' is supported, got '{fmt}'")
        if image_format not in ("png", "jpeg"):
            raise RisbenchError(f"--image-format: expected png or jpeg, got '{image_format}'")
        options = {
            "num_train": num_train,
            "num_val": num_val,
            "num_test": num_test,
            "seed": seed,
            "negative_fraction": negative_fraction,
            "image_size": image_size,
        }
        for fl in flavour:
            overrides = {k: v for k, v in options.items() if v is not None}
            _, cfg = dataset_class_and_config({"preset": "synthref-refcoco", "flavour": fl, **overrides})
            data_cfg = export_refer(cfg, out, image_format=image_format)
            typer.echo(
                f"wrote {out}/{data_cfg['dataset']} ({cfg.num_train}/{cfg.num_val}/{cfg.num_test} scenes); "
                f"read it back with data: {out / (data_cfg['dataset'] + '.yaml')}"
            )

    @data_app.command("check")
    def check_cmd(
        dataset: str = typer.Option(..., "--dataset", help="a preset in registry/datasets/ or a YAML file"),
        root: str = typer.Option(None, "--root", help="the REFER data root (overrides the preset's)"),
        split: str = typer.Option(None, "--split", help="check only this split"),
        deep: bool = typer.Option(
            False, "--deep", help="also decode every image and mask and check each annotation is inside its image"
        ),
    ) -> None:
        """Verify a dataset's layout; print refs, sentences (with `robust`: positive and negative ones) and
        images per split and list what is missing (--deep: decode everything)."""
        from risbench.data import refer, synthref
        from risbench.data.build import dataset_class_and_config

        cls, cfg = dataset_class_and_config(_data_config(dataset, root))
        if cls is synthref.SynthRefDataset:
            typer.echo(f"{dataset}: SynthRef ({cfg.flavour}), generated on the fly, nothing to check on disk")
            for name in [split] if split else synthref.SPLITS:
                n = synthref.split_size(cfg, name)
                typer.echo(
                    f"  {name:6s} scenes {n:7d}  refs {n * cfg.refs_per_scene:7d}  "
                    f"sentences {n * cfg.refs_per_scene * cfg.sentences_per_ref:7d}"
                )
            return
        report = refer.check(cfg, split)
        p = report["paths"]
        typer.echo(f"{dataset}: refs {p.refs}\n  instances {p.instances}\n  images {p.images}/")
        for name, c in report["splits"].items():
            neg = f"  positives {c['positives']:7d}  negatives {c['negatives']:7d}" if cfg.robust else ""
            typer.echo(f"  {name:6s} refs {c['refs']:7d}  sentences {c['sentences']:7d}{neg}  images {c['images']:6d}")
        missing = report["missing"]
        if missing:
            for m in missing[:20]:
                typer.echo(f"  missing: {m}")
            if len(missing) > 20:
                typer.echo(f"  ... and {len(missing) - 20} more")
            raise RisbenchError(f"{len(missing)} missing under {cfg.root}, first: {missing[0]}; {p.layout()}")
        typer.echo("  layout ok")
        if deep:
            from risbench.data.refer_deep import deep_check

            problems, images, anns = deep_check(refer.load_refer(cfg), list(report["splits"]))
            for m in problems[:20]:
                typer.echo(f"  bad: {m}")
            if problems:
                raise RisbenchError(f"data check --deep: {len(problems)} problems, first: {problems[0]}")
            typer.echo(f"  deep check ok: {images} images decoded, {anns} annotations inside their images")

    @data_app.command("stats")
    def stats_cmd(
        dataset: list[str] = typer.Option(
            ["synthref-refcoco", "synthref-refcoco+", "synthref-refcocog", "synthref-refcoco+-robust"],
            "--dataset",
            help="SynthRef presets (repeatable)",
        ),
        limit: int = typer.Option(1000, "--limit", help="scenes measured per split (0: all)"),
    ) -> None:
        """SynthRef statistics: counts per split and flavour, vocabulary, sentence lengths, objects per scene."""
        from risbench.data import synthref
        from risbench.data.build import dataset_class_and_config

        for name in dataset:
            cls, cfg = dataset_class_and_config(name)
            if cls is not synthref.SynthRefDataset:
                raise RisbenchError(f"data stats describes SynthRef presets; '{name}' is not one (try data check)")
            result = synthref.stats(cfg, limit or None)
            vocab = sorted({w for s in result.values() for w in s["vocabulary"]})
            typer.echo(f"{name} (flavour {cfg.flavour}, seed {cfg.seed}, negatives {cfg.negative_fraction}):")
            for split, s in result.items():
                objs = ", ".join(f"{k}: {v}" for k, v in s["objects"].items())
                typer.echo(
                    f"  {split:5s} scenes {s['scenes']:6d}  refs {s['refs']:6d}  sentences {s['sentences']:6d}  "
                    f"[first {s['measured_scenes']} scenes: negatives {s['negatives']}, words/sentence "
                    f"{s['length_mean']:.1f} (max {s['length_max']}), objects per scene {{{objs}}}]"
                )
            typer.echo(f"  vocabulary ({len(vocab)} words): {' '.join(vocab)}")

    @data_app.command("breakdown")
    def breakdown_cmd(
        csv_path: Path = typer.Argument(..., help="a per-sentence CSV from `risbench eval RUN --per-sentence`"),
        threshold: float = typer.Option(50.0, "--iou", help="IoU (percent) at which a sentence counts as a hit"),
        out: Path = typer.Option(None, "--out", help="write the Markdown table here (atomically) instead of stdout"),
    ) -> None:
        """SynthRef error analysis: mIoU and P@X of positive sentences grouped by the kinds of words they use."""
        import pandas as pd

        from risbench.data.synthref_analysis import breakdown
        from risbench.io import atomic_write_text

        if not csv_path.exists():
            raise RisbenchError(f"{csv_path} not found: write one with `risbench eval RUN_DIR --per-sentence`")
        if not csv_path.is_file():
            raise RisbenchError(f"{csv_path} is a folder: give a per-sentence CSV from `risbench eval --per-sentence`")
        try:
            frame = pd.read_csv(csv_path)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
            raise RisbenchError(
                f"{csv_path}: not a CSV ({reason}); give a per-sentence CSV from `risbench eval RUN_DIR --per-sentence`"
            ) from None
        missing = {"exists", "iou", "sentence"} - set(frame.columns)
        if missing:
            raise RisbenchError(
                f"{csv_path}: no column(s) {', '.join(sorted(missing))}; not a per-sentence CSV (write one with "
                f"`risbench eval RUN_DIR --per-sentence`)"
            )
        table = breakdown(frame, threshold)
        rows = ["| words | " + " | ".join(table.columns) + " |", "|---|" + "---:|" * len(table.columns)]
        rows += [f"| {name} | " + " | ".join(f"{v:g}" for v in row) + " |" for name, row in table.iterrows()]
        text = f"Positive sentences of `{csv_path}` by the kinds of words they use (IoU in percent)\n\n"
        text += "\n".join(rows) + "\n"
        if out is None:
            print(text, end="")
        else:
            atomic_write_text(out, text)
