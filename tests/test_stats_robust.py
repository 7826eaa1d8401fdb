"""The robust metrics' statistics: rris_r / rris_riou recomputed from per-sentence files equal
risbench.train.metrics' values, and their paired bootstrap resamples refs (a ref's positives and negatives
together), in `risbench table` as Δ r / Δ rIoU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from risbench.runner import export, tables
from risbench.runner.stats import Sentences
from risbench.runner.stats_robust import paired_ref_bootstrap, ref_groups, robust_point
from risbench.train.metrics import SentenceResult, compute_metrics
from risbench.train.sentences import read_per_sentence, write_per_sentence

N_REFS = 120


def robust_sentences(seed: int, fp_rate: float) -> list[SentenceResult]:
    """The same refs for every seed (1-3 sentences; each after a ref's first is negative w.p. 0.4). A
    negative's prediction is non-empty (a false positive of 30-200 px) w.p. `fp_rate`; the predictions vary
    with the seed."""
    layout, rng = np.random.default_rng(1234), np.random.default_rng(seed)
    out: list[SentenceResult] = []
    for ref in range(N_REFS):
        for j in range(int(layout.integers(1, 4))):
            i = len(out)
            if j > 0 and layout.random() < 0.4:
                area = int(rng.integers(30, 200)) if rng.random() < fp_rate else 0
                out.append(SentenceResult(i, f"ref{ref}", False, 0, area, area, 0, 4000, sent_id=i))
            else:
                gt = int(rng.integers(100, 400))
                pred = int(rng.integers(50, 450))
                inter = int(min(gt, pred) * rng.uniform(0.3, 1.0))
                out.append(SentenceResult(i, f"ref{ref}", True, inter, gt + pred - inter, pred, gt, 4000, sent_id=i))
    return out


def as_counts(results: list[SentenceResult]) -> tuple[Sentences, np.ndarray]:
    s = Sentences(
        np.array([r.index for r in results]), np.array([r.exists for r in results]),
        np.array([r.inter for r in results]), np.array([r.union for r in results]),
    )  # fmt: skip
    return s, ref_groups([r.ref_id for r in results], s.index)


@pytest.mark.parametrize("fp_rate", [0.0, 0.3, 1.0])
def test_robust_point_equals_the_metrics_module(tmp_path: Path, fp_rate: float) -> None:
    results = robust_sentences(3, fp_rate)
    reported = compute_metrics(results, ["rris"])
    # through the per-sentence file, as `risbench table` reads it
    write_per_sentence(tmp_path, "val", results, 0.35, "original")
    frame = read_per_sentence(tmp_path / "per_sentence.val.csv.gz")
    s = Sentences(*(frame[c].to_numpy() for c in ("index", "exists", "inter", "union")))
    ours = robust_point(s, ref_groups(list(frame["ref_id"]), s.index))
    assert ours["rris_r"] == pytest.approx(reported["rris_r"], rel=1e-12)
    assert ours["rris_riou"] == pytest.approx(reported["rris_rIoU"], rel=1e-12)
    assert reported["rris_r"] == pytest.approx(100.0 * (1 - fp_rate), abs=12)


def test_a_sentence_without_a_ref_id_is_its_own_ref() -> None:
    assert ref_groups(["a", None, "a", float("nan"), "b"], np.arange(5)).tolist() == [0, 1, 0, 2, 3]
    assert ref_groups(None, np.array([4, 7])).tolist() == [0, 1]


def test_no_negatives_leaves_r_undefined() -> None:
    s, g = as_counts([r for r in robust_sentences(0, 0.5) if r.exists])
    assert robust_point(s, g)["rris_r"] is None
    d = paired_ref_bootstrap([s], [s], g)
    assert d["rris_r"].low is None and not d["rris_r"].separable
    assert d["rris_riou"].diff == 0.0 and d["rris_riou"].low == d["rris_riou"].high == 0.0


def test_paired_ref_bootstrap_separates_fewer_false_positives_and_not_noise() -> None:
    seeds = (0, 1, 2)
    ref = [as_counts(robust_sentences(s, 0.5)) for s in seeds]
    groups = ref[0][1]
    # the same positives, fewer false positives: every negative of the reference that fired now stays empty
    better = []
    for s, _ in ref:
        union = np.where(s.exists, s.union, np.where(np.arange(len(s)) % 3 == 0, s.union, 0))
        better.append(Sentences(s.index, s.exists, s.inter, union))
    d = paired_ref_bootstrap(better, [s for s, _ in ref], groups, replicates=500)
    assert d["rris_r"].diff > 0 and d["rris_r"].separable
    assert d["rris_riou"].diff > 0 and d["rris_riou"].separable
    # the reference against itself: no difference, a zero-width interval
    same = paired_ref_bootstrap([s for s, _ in ref], [s for s, _ in ref], groups, replicates=200)
    assert same["rris_r"].diff == 0.0 and same["rris_r"].low == same["rris_r"].high == 0.0
    # deterministic: equal inputs give equal intervals
    again = paired_ref_bootstrap(better, [s for s, _ in ref], groups, replicates=500)
    assert (again["rris_r"].low, again["rris_r"].high) == (d["rris_r"].low, d["rris_r"].high)


def test_paired_ref_bootstrap_refuses_mismatched_runs() -> None:
    s, g = as_counts(robust_sentences(0, 0.5))
    with pytest.raises(ValueError, match="same, non-zero number of seeds"):
        paired_ref_bootstrap([s, s], [s], g)
    with pytest.raises(ValueError, match="same sentences"):
        paired_ref_bootstrap([s], [s], g[:-1])


def test_table_gives_delta_r_and_riou_over_refs(tmp_path: Path) -> None:
    exp = tmp_path / "robust"
    for variant, fp_rate in (("plain", 0.6), ("head", 0.1)):
        for seed in (0, 1, 2):
            run = exp / f"{variant}-s{seed}-00000{seed}"
            run.mkdir(parents=True)
            (run / "run.json").write_text(json.dumps({"experiment": "robust", "variant": variant, "seed": seed}))
            # the same sentences, positives and negatives for both variants; only the false-positive rate differs
            results = robust_sentences(seed, 0.0)
            rng = np.random.default_rng(99 + seed)
            for r in results:
                if not r.exists and rng.random() < fp_rate:
                    r.union = r.pred_area = 120
            split = {"split": "val", "threshold": 0.35, "resolution": "original", **compute_metrics(results)}
            (run / "metrics.json").write_text(json.dumps({"splits": {"val": split}}))
            write_per_sentence(run, "val", results, 0.35, "original")
    meta = {
        "name": "robust",
        "variants": ["plain", "head"],
        "table": {
            "columns": ["oiou", "miou", "rris_r", "rris_riou"], "split": "val", "reference": "plain",
            "delta": ["oiou", "rris_r", "rris_riou"],
        },
    }  # fmt: skip
    (exp / "experiment.json").write_text(json.dumps(meta))
    t = tables.table_for_dir(exp)
    st = t.stats
    assert st is not None and st.note == {}
    assert st.separable.loc["head", "rris_r"] and st.diff.loc["head", "rris_r"] > 30
    assert st.diff.loc["head", "oiou"] == 0.0  # positives are equal: no oIoU difference
    assert st.refs["head"] == N_REFS
    text = export.render(t, "markdown")
    assert "Δ r" in text and "Δ rIoU" in text
    assert f"(Δ r and Δ rIoU: over their {N_REFS} refs" in t.caption
    csv_text = export.render(t, "csv")
    assert "rris_r_diff_ci_low" in csv_text.splitlines()[0]
