"""Statistics in `risbench table`: fake run folders with per-sentence files and the metrics.json that
metrics.py computes from them; Δ columns, marks, reasons for missing cells, the reference row."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from risbench.cli.main import main
from risbench.config import PROJECT_ROOT
from risbench.runner import export, tables
from risbench.runner.experiment import load_experiment
from risbench.train.metrics import SentenceResult, compute_metrics
from risbench.train.sentences import write_per_sentence

N_SENTENCES = 200
SEEDS = (0, 1, 2)


def sentences(variant: str, seed: int) -> list[SentenceResult]:
    """`better` gains 8 px of intersection on every sentence of the `shared` reference (same seed);
    `noise` draws its own, independent counts from the same distribution."""
    rng = np.random.default_rng(1000 * seed + (7 if variant == "noise" else 0))
    union = rng.integers(100, 500, size=N_SENTENCES)
    inter = (union * rng.beta(4, 2, size=N_SENTENCES)).astype(int)
    if variant == "better":
        inter = np.minimum(inter + 8, union)
    return [
        SentenceResult(i, f"r{i // 2}", True, int(a), int(u), int(u), int(u), 4000, sent_id=5 * i)
        for i, (a, u) in enumerate(zip(inter, union, strict=True))
    ]


def write_runs(root: Path, variants=("noise", "better", "shared"), table: dict | None = None, make=None) -> Path:
    """Fake run folders of `variants` x SEEDS with the results `make(variant, seed)` (default `sentences`)."""
    exp = root / "exp"
    for index, variant in enumerate(variants):
        for seed in SEEDS:
            run = exp / f"{variant}-s{seed}-abc{index}{seed}0"
            run.mkdir(parents=True)
            (run / "run.json").write_text(
                json.dumps({"experiment": "exp", "variant": variant, "seed": seed, "index": index})
            )
            results = (make or sentences)(variant, seed)
            split = {"split": "val", "threshold": 0.35, "resolution": "original", **compute_metrics(results)}
            (run / "metrics.json").write_text(json.dumps({"splits": {"val": split}}))
            write_per_sentence(run, "val", results, 0.35, "original")
    spec = {"split": "val", "columns": ["p50", "oiou", "miou"], **(table or {})}
    meta = {"name": "exp", "variants": list(variants), "seeds": list(SEEDS), "table": spec}
    (exp / "experiment.json").write_text(json.dumps(meta))
    return exp


def row(text: str, variant: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {variant} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_delta_columns_marks_and_caption(tmp_path: Path) -> None:
    exp = write_runs(tmp_path)
    t = tables.table_for_dir(exp)
    st = t.stats
    assert st is not None and st.reference == "shared"  # default: the last run listed
    assert st.diff.loc["better", "oiou"] > 0 and st.diff_low.loc["better", "oiou"] > 0
    assert st.separable.loc["better"].all()
    assert not st.separable.loc["noise", "oiou"] and not st.separable.loc["noise", "miou"]
    assert st.diff_low.loc["noise", "oiou"] < st.diff.loc["noise", "oiou"] < st.diff_high.loc["noise", "oiou"]
    # the point difference is the difference of the means that metrics.json reports
    assert st.diff.loc["better", "miou"] == pytest.approx(t.mean.loc["better", "miou"] - t.mean.loc["shared", "miou"])
    text = export.render(t, "markdown")
    header = row(text, "variant")
    assert header == ["variant", "P@0.5", "oIoU", "mIoU", "Δ oIoU", "Δ mIoU"]
    better, noise, shared = row(text, "better"), row(text, "noise"), row(text, "shared")
    d, lo, hi = st.diff.loc["better", "oiou"], st.diff_low.loc["better", "oiou"], st.diff_high.loc["better", "oiou"]
    assert better[4] == f"+{d:.2f} [{lo:.2f}, {hi:.2f}]*"
    assert not noise[4].endswith("*") and noise[4].count("[") == 1
    assert shared[4:] == ["ref", "ref"]
    half = t.stats.half_width("better", "oiou")
    assert better[2] == f"**{t.mean.loc['better', 'oiou']:.2f}±{half:.2f}**"  # best mean still bold
    assert (
        "Δ vs shared: paired bootstrap over 200 sentences and 3 seeds, 2000 replicates, percentile 95% CI; "
        "* = CI excludes 0" in t.caption
    )
    assert "mean ± 95% t-interval half-width over 3 seeds" in t.caption


def test_csv_carries_every_statistic(tmp_path: Path) -> None:
    t = tables.table_for_dir(write_runs(tmp_path))
    rows = {r["variant"]: r for r in csv.DictReader(io.StringIO(export.render(t, "csv")))}
    better, shared = rows["better"], rows["shared"]
    for col in ("p50", "oiou", "miou"):
        assert float(better[f"{col}_ci_low"]) <= float(better[f"{col}_mean"]) <= float(better[f"{col}_ci_high"])
        assert better[f"{col}_n"] == "3" and better[f"{col}_separable"] == "true"
        assert float(better[f"{col}_diff_ci_low"]) > 0
        assert shared[f"{col}_diff"] == "" and shared[f"{col}_separable"] == ""
    assert rows["noise"]["oiou_separable"] == "false"
    assert (shared["reference"], better["reference"]) == ("true", "false")
    assert (better["diff_seeds"], better["diff_sentences"], better["diff_note"]) == ("3", "200", "")


def test_tables_are_reproducible(tmp_path: Path) -> None:
    exp = write_runs(tmp_path)
    for fmt in ("csv", "markdown", "latex"):
        assert export.render(tables.table_for_dir(exp), fmt) == export.render(tables.table_for_dir(exp), fmt)


def test_missing_or_stale_per_sentence_files_explain_the_cell(tmp_path: Path) -> None:
    exp = write_runs(tmp_path)
    for path in exp.glob("noise-*/per_sentence.val.csv.gz"):
        path.unlink()
    metrics = exp / "better-s1-abc110" / "metrics.json"
    data = json.loads(metrics.read_text())
    data["splits"]["val"]["oIoU"] += 1.0  # a metrics.json the per-sentence file no longer reproduces
    metrics.write_text(json.dumps(data))
    t = tables.table_for_dir(exp)
    text = export.render(t, "markdown")
    assert row(text, "noise")[4:] == ["no per-sentence results"] * 2
    assert "±" in row(text, "noise")[2]  # the interval over seeds stays
    assert t.stats.diff_seeds["better"] == 2  # seed 1 dropped: its file does not match metrics.json
    assert "2 seeds" in t.caption
    for path in exp.glob("shared-*/per_sentence.val.csv.gz"):
        path.unlink()
    t = tables.table_for_dir(exp)
    assert row(export.render(t, "markdown"), "better")[4] == "no per-sentence results for shared"
    assert "Δ vs shared: not computed" in t.caption
    assert "no per-sentence results" in export.render(t, "csv")


def test_other_sentences_or_settings_are_not_compared(tmp_path: Path) -> None:
    exp = write_runs(tmp_path)
    for seed in SEEDS:  # the reference evaluated at another threshold: not a paired comparison
        run = next(exp.glob(f"shared-s{seed}-*"))
        write_per_sentence(run, "val", sentences("shared", seed), 0.5, "original")
    text = export.render(tables.table_for_dir(exp), "markdown")
    assert row(text, "better")[4] == "other sentences or settings than shared"
    exp = write_runs(tmp_path / "fewer")
    for seed in SEEDS:  # the variant evaluated on fewer sentences
        run = next(exp.glob(f"noise-s{seed}-*"))
        results = sentences("noise", seed)[:150]
        split = {"split": "val", **compute_metrics(results)}
        (run / "metrics.json").write_text(json.dumps({"splits": {"val": split}}))
        write_per_sentence(run, "val", results, 0.35, "original")
    text = export.render(tables.table_for_dir(exp), "markdown")
    assert row(text, "noise")[4] == "other sentences or settings than shared" and "[" in row(text, "better")[4]
    exp = write_runs(tmp_path / "ids")
    run = next(exp.glob("better-s1-*"))  # one seed of the variant scored other sentences (same counts)
    results = sentences("better", 1)
    for r in results:
        r.sent_id += 1
    write_per_sentence(run, "val", results, 0.35, "original")
    assert row(export.render(tables.table_for_dir(exp), "markdown"), "better")[4].startswith("other sentences")


def test_reference_option_and_bootstrap_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = write_runs(tmp_path, table={"reference": "noise", "delta": ["p50"]})
    t = tables.table_for_dir(exp)
    assert t.stats.reference == "noise" and row(export.render(t, "markdown"), "variant")[-1] == "Δ P@0.5"
    assert main(["table", str(exp), "--reference", "better", "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert row(out, "better")[-1] == "ref" and "[" not in row(out, "shared")[-1]
    assert "no interval (bootstrap off)" in out


@pytest.mark.parametrize("where", ["cli", "experiment.json"])
def test_unknown_reference_exits_2_with_one_line(where: str, tmp_path: Path, capsys) -> None:
    exp = write_runs(tmp_path, table={"reference": "sharde"} if where == "experiment.json" else None)
    args = ["table", str(exp)] + (["--reference", "sharde"] if where == "cli" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'shared'" in err, err
    assert main(["table", str(exp), "--bootstrap", "-1"]) == 2


def test_cost_only_and_single_seed_tables(tmp_path: Path) -> None:
    exp = write_runs(tmp_path)
    for run in exp.glob("*-s[12]-*"):
        shutil.rmtree(run)
    t = tables.table_for_dir(exp)
    text = export.render(t, "markdown")
    body = [line for line in text.splitlines() if line.startswith("| ")]
    assert "±" not in "".join(body) and row(text, "better")[4].endswith("*")  # one seed: sentences resample
    assert "1 seed," in t.caption
    t = tables.table_for_dir(exp, columns=["params", "gflops"])  # a flops-only table: no accuracy, no Δ
    assert "Δ" not in export.render(t, "markdown")


SHIPPED = sorted(p for p in (PROJECT_ROOT / "experiments").glob("**/*.yaml") if p.name != "efficiency.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_shipped_reference_is_the_proposed_model(path: Path, tmp_path: Path) -> None:
    """The reference row (table.reference, else the last run) is the one run whose model, data and recipe are
    the base's unchanged: the proposed Shared-RIS preset of the experiment. An experiment where every run sets
    its own model (single_encoder: two encoders on one FPN) must name its reference."""
    exp = load_experiment(path)
    reference = exp.table.reference or exp.variants[-1]
    raw = yaml.safe_load(path.read_text())
    raw["runs"] = [{"name": "base"}]
    raw.pop("table", None)
    (tmp_path / path.name).write_text(yaml.safe_dump(raw))
    base = load_experiment(tmp_path / path.name).runs[0].config
    keys = ("model", "data", "train")  # a recipe ablation (shape_weighting) changes train only
    unchanged = {r.variant for r in exp.runs if all(r.config[k] == base[k] for k in keys)}
    if unchanged:
        assert unchanged == {reference}
    else:
        assert exp.table.reference in exp.variants


def test_latex_with_statistics_is_plain_ascii_and_rectangular(tmp_path: Path) -> None:
    """pdflatex (with inputenc utf8) is not everywhere: at least every non-ASCII character must be escaped
    and every row must have as many cells as the header."""
    text = export.render(tables.table_for_dir(write_runs(tmp_path)), "latex")
    assert text.isascii(), [c for c in text if not c.isascii()]
    rows = [line for line in text.splitlines() if line.endswith("\\\\")]
    assert len(rows) == 5 and len({line.count("&") for line in rows[1:]}) == 1  # row 0 has \multicolumn
    assert "\\multicolumn{2}{c}{oIoU}" in rows[0] and rows[1].endswith("& ours & $\\Delta$ & ours & $\\Delta$ \\\\")
    assert rows[3].startswith("better &") and rows[3].count("$^*$") == 2 and rows[4].count("& ref") == 2


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_with_statistics_compiles(tmp_path: Path) -> None:
    import subprocess

    tex = tmp_path / "table.tex"
    tex.write_text(export.render(tables.table_for_dir(write_runs(tmp_path)), "latex"))
    script = PROJECT_ROOT / "scripts" / "check_latex.sh"
    result = subprocess.run(["bash", str(script), str(tex)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
