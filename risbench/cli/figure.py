"""`risbench figure grid RUN...` and `risbench figure attention RUN`: figures for a paper from trained runs."""

from __future__ import annotations

from pathlib import Path

import typer


def _stem(out: Path) -> Path:
    return out.with_suffix("") if out.suffix.lower() in (".png", ".pdf") else out


def register(app: typer.Typer) -> None:
    """Add `risbench figure` to `app`."""
    figure_app = typer.Typer(
        help="Figures from trained runs: qualitative grids and attention maps (PNG + PDF).", no_args_is_help=True
    )
    app.add_typer(figure_app, name="figure")

    @figure_app.command("grid")
    def grid_cmd(
        run_dirs: list[Path] = typer.Argument(..., help="trained run folders, one column each"),
        split: str = typer.Option("val", "--split", help="the split the sentences come from"),
        n: int = typer.Option(4, "-n", help="number of sentences (rows)"),
        pick: str = typer.Option(
            "first", "--pick", help="first | disagree (largest IoU spread across the runs, from per-sentence files)"
        ),
        name: list[str] = typer.Option([], "--name", help="a column title per run (default: the folder name)"),
        checkpoint: str = typer.Option("auto", "--checkpoint", help="auto | best | last"),
        out: Path = typer.Option(Path("grid.png"), "--out", help="writes OUT.png and OUT.pdf"),
    ) -> None:
        """Qualitative grid: per sentence, the image, the ground truth and each run's prediction with its IoU."""
        from risbench.errors import RisbenchError
        from risbench.runner.figures import grid_figure, pick_sentences
        from risbench.train.figure_data import predictions

        names = list(name) or [p.name for p in run_dirs]
        if len(names) != len(run_dirs):
            raise RisbenchError(f"--name given {len(names)} times for {len(run_dirs)} runs; give one per run or none")
        indices = pick_sentences(list(run_dirs), split, n, pick)
        samples, masks, ious = predictions(list(run_dirs), split, indices, checkpoint)
        written = grid_figure(samples, names, masks, ious, _stem(out))
        print("wrote " + " and ".join(str(p) for p in written) + f" (sentences {', '.join(map(str, indices))})")

    @figure_app.command("attention")
    def attention_cmd(
        run_dir: Path = typer.Argument(..., help="a trained run folder"),
        split: str = typer.Option("val", "--split", help="the split the sentence comes from"),
        index: int = typer.Option(0, "--index", help="the sentence's position in the split"),
        layer: str = typer.Option(None, "--layer", help="e.g. 'encoder layer 2' or 'fpn stage 1' (default: the last)"),
        checkpoint: str = typer.Option("auto", "--checkpoint", help="auto | best | last"),
        out: Path = typer.Option(Path("attention.png"), "--out", help="writes OUT.png and OUT.pdf"),
    ) -> None:
        """Attention maps: per text token, its attention on the image patches (Shared-RIS Figs. 7-8)."""
        from risbench.runner.figures import attention_figure
        from risbench.train.figure_data import attention

        att = attention(run_dir, split, index, checkpoint)
        written = attention_figure(att, layer, _stem(out))
        print("wrote " + " and ".join(str(p) for p in written) + f" (layers kept: {', '.join(att.maps)})")
