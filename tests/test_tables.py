"""`risbench table`: tidy collection, the paper-shaped pivot, CSV / Markdown / LaTeX export."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from risbench.cli.main import main
from risbench.config import PROJECT_ROOT
from risbench.runner import export, tables

# oIoU / mIoU per variant and seed (percent); two variants x three seeds, one variant x one seed
METRICS = {
    "none": {0: (60.0, 62.0), 1: (62.0, 64.0), 2: (64.0, 66.0)},
    "cris": {0: (70.0, 71.0), 1: (70.0, 73.0), 2: (70.0, 75.0)},
    "shared": {0: (66.0, 80.0)},
}
FPN_PARAMS = {"none": 0.05e6, "cris": 1.5e6, "shared": 0.53e6}


NO_RRIS = [c for c in tables.COLUMNS if not c.startswith("rris_")]  # these runs have no negatives


def write_runs(root: Path, mirrors: str | None = "IV") -> Path:
    exp = root / "fpn_ablation"
    for index, (variant, seeds) in enumerate(METRICS.items()):
        for seed, (oiou, miou) in seeds.items():
            run = exp / f"{variant}-s{seed}-abc{index}{seed}0"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(
                "model:\n  encoder: {name: beit3, image_size: 128, weights: null}\ndata: {name: synthref}\n"
                "eval: {threshold: 0.35, resolution: original}\n"
            )
            (run / "run.json").write_text(
                json.dumps({"experiment": "fpn_ablation", "variant": variant, "seed": seed, "index": index})
            )
            split = {"split": "val", "threshold": 0.35, "oIoU": oiou, "mIoU": miou, "P@0.5": 50.0 + seed, "P@0.9": 5.0}
            (run / "metrics.json").write_text(
                json.dumps({"splits": {"val": split}, "provenance": {"weights": "random"}})
            )
            comps = {
                "encoder": {"params": 4e6, "flops": 0.7e9},
                "fpn": {"params": FPN_PARAMS[variant], "flops": FPN_PARAMS[variant] * 300},
                "decoder": {"params": 0.3e6, "flops": 0.3e9},
            }
            flops = {"components": comps, "total": {"params": 5e6, "flops": 1.2e9}, "input": {"text_len": 20}}
            (run / "flops.json").write_text(json.dumps(flops))
    meta = {
        "name": "fpn_ablation",
        "variants": ["none", "cris", "shared"],
        "seeds": [0, 1, 2],
        "table": {"mirrors": mirrors, "cost": "fpn", "split": "val", "columns": NO_RRIS},
    }
    (exp / "experiment.json").write_text(json.dumps(meta))
    return exp


def test_collect_is_tidy(tmp_path: Path) -> None:
    exp = write_runs(tmp_path)
    tidy = tables.collect(exp)
    # 7 runs x (4 split metrics + 8 flops values)
    assert len(tidy) == 7 * (4 + 8)
    assert set(tidy["metric"]) >= {"oiou", "miou", "p50", "p90", "params.fpn", "gflops.total"}
    assert tidy.groupby(["run_id", "split", "metric"]).size().max() == 1


def test_pivot_mean_std_and_paper_columns(tmp_path: Path) -> None:
    t = tables.table_for_dir(write_runs(tmp_path))
    assert list(t.mean.index) == ["none", "cris", "shared"]
    assert t.mean.loc["none", "oiou"] == pytest.approx(62.0)
    assert t.std.loc["none", "oiou"] == pytest.approx(2.0)  # sample std of 60, 62, 64
    assert t.std.loc["cris", "miou"] == pytest.approx(2.0)
    assert t.n.to_dict() == {"none": 3, "cris": 3, "shared": 1}
    assert t.mean.loc["cris", "params"] == pytest.approx(1.5)  # FPN params (table cost: fpn), in M
    assert t.mean.loc["cris", "gflops"] == pytest.approx(0.45)
    # the paper's Table IV beside ours
    assert t.paper.loc["shared", "oiou"] == pytest.approx(68.42)
    assert t.paper.loc["cris", "params"] == pytest.approx(23)
    assert t.best()["oiou"] == ({"cris"}, {"shared"})
    assert t.best()["miou"] == ({"shared"}, {"cris"})
    assert (
        "split val" in t.caption
        and "mean ± 95% t-interval half-width over 3 seeds" in t.caption
        and "1 multiply-add = 1 FLOP" in t.caption
    )


def test_csv_plain_numbers(tmp_path: Path) -> None:
    text = export.render(tables.table_for_dir(write_runs(tmp_path)), "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["variant"] for r in rows] == ["none", "cris", "shared"]
    assert float(rows[0]["oiou_mean"]) == 62.0 and float(rows[0]["oiou_std"]) == 2.0
    assert rows[2]["oiou_std"] == ""  # one seed: no std
    assert float(rows[2]["paper_oiou"]) == 68.42
    assert "paper_miou" in rows[0] and "paper_p50" not in rows[0]  # Table IV has no P@X


def test_markdown_bold_and_underline(tmp_path: Path) -> None:
    text = export.render(tables.table_for_dir(write_runs(tmp_path)), "markdown")
    cris = next(line for line in text.splitlines() if line.startswith("| cris "))
    assert "**70.00±0.00**" in cris  # best oIoU (± the t-interval half-width: std 0)
    assert "| 23 | 19 | 66.91 | 68.37 |" in cris  # the paper's numbers as printed there
    assert "<u>73.00±4.97</u>" in cris  # second mIoU: std 2 over 3 seeds, 4.303 * 2 / sqrt(3) = 4.97
    assert "paper oIoU" in text.splitlines()[0]


def test_latex_booktabs_bold_underline(tmp_path: Path) -> None:
    text = export.render(tables.table_for_dir(write_runs(tmp_path)), "latex")
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text
    # one decimal where the column has a seed interval, the half-width small beside the mean
    assert "\\textbf{70.0{\\scriptsize$\\pm$0.0}}" in text
    assert "\\underline{73.0{\\scriptsize$\\pm$5.0}}" in text  # 4.303 * 2 / sqrt(3) = 4.97
    assert "\\multicolumn{3}{c}{oIoU}" in text and "\\cmidrule(lr){9-11}" in text
    assert " & ours & $\\Delta$ & paper & ours & $\\Delta$ & paper \\\\" in text
    cris = next(line for line in text.splitlines() if line.startswith("cris &"))
    assert "& n/a & 66.91 &" in cris and "$\\Delta$ n/a for none, cris: no per-sentence results" in text
    assert "\\begin{table*}" in text and "\\caption{" in text


def test_table_command_writes_atomically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = write_runs(tmp_path, mirrors=None)
    out = tmp_path / "out" / "t.tex"
    assert main(["table", str(exp), "--format", "latex", "--out", str(out)]) == 0
    assert "\\toprule" in out.read_text() and "paper" not in out.read_text()
    assert not list(out.parent.glob(".*tmp"))
    assert main(["table", str(exp), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("variant,paper_variant,seeds,params_mean")
    assert main(["table", str(exp), "--format", "html"]) == 2


def test_newest_run_wins_without_an_expansion(tmp_path: Path) -> None:
    exp = write_runs(tmp_path)
    (exp / "experiment.json").unlink()
    old = exp / "none-s0-abc000"
    new = exp / "none-s0-fff000"
    shutil.copytree(old, new)
    data = json.loads((new / "metrics.json").read_text())
    data["splits"]["val"]["oIoU"] = 90.0
    (new / "metrics.json").write_text(json.dumps(data))
    t = tables.table_for_dir(exp)
    assert t.mean.loc["none", "oiou"] == pytest.approx((90.0 + 62.0 + 64.0) / 3)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles_with_pdflatex(tmp_path: Path) -> None:
    tex = tmp_path / "table.tex"
    tex.write_text(export.render(tables.table_for_dir(write_runs(tmp_path)), "latex"))
    result = subprocess.run(
        ["bash", str(PROJECT_ROOT / "scripts" / "check_latex.sh"), str(tex)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fits a one-column article and a two-column IEEE page" in result.stdout


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_check_latex_fails_on_a_table_wider_than_the_page(tmp_path: Path) -> None:
    """Without its shrink-to-fit box this 14-column table is wider than a one-column article: the check
    must say so and fail, not print ok."""
    text = export.render(tables.table_for_dir(write_runs(tmp_path)), "latex")
    unboxed = text.replace(export.SHRINK_OPEN, "{%\n")
    assert unboxed != text
    tex = tmp_path / "wide.tex"
    tex.write_text(unboxed)
    result = subprocess.run(
        ["bash", str(PROJECT_ROOT / "scripts" / "check_latex.sh"), str(tex)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "(article): overfull \\hbox" in result.stderr, result.stderr


def test_caption_names_the_weights_a_run_loaded_not_its_config_null(tmp_path: Path) -> None:
    """A dual encoder's config has `encoder.weights: null` (its towers name theirs): the caption must take
    what metrics.json says the run loaded, and say "random" only for a run that loaded nothing."""
    exp = write_runs(tmp_path)
    for metrics in exp.glob("*/metrics.json"):
        data = json.loads(metrics.read_text())
        data["provenance"]["weights"] = "vision=/x/v.pth,text=/x/t.pth"
        metrics.write_text(json.dumps(data))
    caption = tables.caption_for(json.loads((exp / "experiment.json").read_text()), exp)
    assert "weights: vision /x/v.pth, text /x/t.pth;" in caption and "random" not in caption
    next(exp.glob("*/metrics.json")).unlink()  # a run without metrics falls back to its config
    assert "weights: random, vision" in tables.caption_for(json.loads((exp / "experiment.json").read_text()), exp)
