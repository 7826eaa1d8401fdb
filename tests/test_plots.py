"""Plots: the numbers behind them (risbench.runner.plot_data) on inputs with known answers, and the PNG /
PDF files that `risbench run` and `risbench curve --plot` write (Agg canvas, no display)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_tables import write_runs  # tests/ is on sys.path (pytest's prepend import mode)

from risbench.cli.main import main
from risbench.runner import plot_data, plots, tables

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF-"


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def is_pdf(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:5] == PDF


def size_run(root: Path, variant: str, seed: int, by_size: dict) -> Path:
    run = root / f"{variant}-s{seed}-abcdef"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"variant": variant, "seed": seed}))
    (run / "metrics.json").write_text(json.dumps({"splits": {"val": {"oIoU": 1.0, "iou_by_size": by_size}}}))
    return run


def bucket(miou: float | None, num: int) -> dict:
    return {"num": num, "mIoU": miou, "oIoU": None if miou is None else miou + 1}


def test_size_summary_averages_seeds_that_have_the_bucket(tmp_path: Path) -> None:
    runs = [
        size_run(tmp_path, "b", 0, {"1-5%": bucket(40.0, 10), "0-1%": bucket(10.0, 4)}),
        size_run(tmp_path, "b", 1, {"1-5%": bucket(50.0, 12), "0-1%": bucket(None, 0)}),  # no small target
        size_run(tmp_path, "a", 0, {"1-5%": bucket(70.0, 10), "0-1%": bucket(30.0, 4)}),
    ]
    frame = plot_data.size_frame(runs)
    assert len(frame) == 6 and set(frame["low"]) == {0.0, 1.0}
    summary = plot_data.size_summary(frame, "mIoU", variants=["a", "b"])
    got = [(r.bucket, r.variant, r.value, r.seeds) for r in summary.itertuples()]
    assert got == [("0-1%", "a", 30.0, 1), ("0-1%", "b", 10.0, 1), ("1-5%", "a", 70.0, 1), ("1-5%", "b", 45.0, 2)]
    assert summary.loc[3, "num"] == 11.0
    assert plot_data.size_summary(frame, "oIoU").query("variant == 'b' and bucket == '1-5%'")["value"].item() == 46.0


def test_metric_and_cost_frames_come_from_the_table(tmp_path: Path) -> None:
    t = tables.table_for_dir(write_runs(tmp_path))
    oiou = plot_data.metric_frame(t, "oiou").set_index("variant")
    assert list(oiou.index) == ["none", "cris", "shared"]
    assert oiou.loc["none", "mean"] == 62.0 and oiou.loc["none", "seeds"] == 3
    half = 4.302652729911275 * 2 / math.sqrt(3)  # t_{0.975,2} * std 2 / sqrt(3)
    assert oiou.loc["none", "low"] == pytest.approx(62.0 - half)
    assert oiou.loc["none", "high"] == pytest.approx(62.0 + half)
    assert math.isnan(oiou.loc["shared", "low"])  # one seed: no interval
    cost = plot_data.cost_frame(t, "gflops", "oiou").set_index("variant")
    assert cost.loc["cris", "cost"] == pytest.approx(1.5e6 * 300 / 1e9) and cost.loc["cris", "mean"] == 70.0
    # a table without the cost column (table.columns leaves it out): no cost plot, not a crash
    no_cost = plot_data.cost_frame(t, "not_a_column", "oiou")
    assert no_cost.empty and "cost" in no_cost.columns


def log_curve(run: Path, points: list[tuple[int, float]]) -> None:
    lines = [json.dumps({"step": 1, "loss": 0.5})]
    for step, value in points:
        val = {"split": "val", "oIoU": value, "mIoU": value + 1, "num_sentences": 8}
        lines.append(json.dumps({"step": step, "train_seconds": 6.0 * step, "val": val}))
    (run / "train_log.jsonl").write_text("\n".join(lines) + "\n")


def test_experiment_plots_write_png_and_pdf(tmp_path: Path) -> None:
    exp = write_runs(tmp_path / "runs")
    run_dirs = sorted(p for p in exp.iterdir() if p.is_dir())
    t = tables.table_for_dir(exp)
    out = tmp_path / "results"
    written = plots.experiment_plots(t, run_dirs, out, cost_scope="fpn")
    assert {p.name for p in written} == {"cost.pdf", "cost.png", "metrics.pdf", "metrics.png"}  # no curve or size
    for run in run_dirs:
        log_curve(run, [(10, 20.0), (20, 30.0)])
        data = json.loads((run / "metrics.json").read_text())
        data["splits"]["val"]["iou_by_size"] = {"0-1%": bucket(5.0, 2), "1-5%": bucket(25.0, 6)}
        (run / "metrics.json").write_text(json.dumps(data))
    written = plots.experiment_plots(t, run_dirs, out, cost_scope="fpn")
    assert {p.stem for p in written} == {"curves", "size", "metrics", "cost"}
    assert all(is_png(p) if p.suffix == ".png" else is_pdf(p) for p in written)
    assert not list(out.glob(".*tmp"))
    frame = plot_data.curve_frame(run_dirs)
    assert len(frame) == 2 * len(run_dirs) and frame["minutes"].tolist()[:2] == [1.0, 2.0]


def test_curve_command_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for run, points in ((a, [(5, 10.0), (10, 20.0)]), (b, [(5, 12.0)])):
        run.mkdir()
        log_curve(run, points)
    assert main(["curve", str(a), str(b), "--plot", str(tmp_path / "fig" / "curves.png")]) == 0
    assert is_png(tmp_path / "fig" / "curves.png") and is_pdf(tmp_path / "fig" / "curves.pdf")
    assert "wrote " in capsys.readouterr().out
