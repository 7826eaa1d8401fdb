"""Accuracy over one kind of sentence (`p50@shape`): the dataset names each sentence's kind, evaluation
keeps it (metrics.json's `by_kind`, the per-sentence file's `kind`), and a table column over that kind gets
the same intervals and paired differences as a column over all sentences."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_table_stats import write_runs

from risbench.cli.main import main
from risbench.runner import export, stats, tables
from risbench.runner.columns import higher_is_better, is_column, label
from risbench.train.metrics import SentenceResult, compute_metrics
from risbench.train.sentences import encode, per_sentence_path, read_per_sentence, write_per_sentence

KINDS = ("shape", "colour", "colour+shape")


def results(variant: str, seed: int, n: int = 240) -> list[SentenceResult]:
    """`better` gains intersection on its shape sentences only; the other kinds are the reference's."""
    rng = np.random.default_rng(100 * seed)
    union = rng.integers(100, 500, size=n)
    inter = (union * rng.beta(2, 2, size=n)).astype(int)
    kinds = [KINDS[i % 3] for i in range(n)]
    if variant == "better":
        inter = np.where(np.array(kinds) == "shape", np.minimum(inter + 60, union), inter)
    return [
        SentenceResult(i, f"r{i}", True, int(a), int(u), int(u), int(u), 4000, sent_id=i, kind=k)
        for i, (a, u, k) in enumerate(zip(inter, union, kinds, strict=True))
    ]


def test_by_kind_is_the_plain_metrics_over_that_kind():
    res = results("shared", 0)
    by_kind = compute_metrics(res)["by_kind"]
    assert set(by_kind) == set(KINDS)
    for kind in KINDS:
        alone = compute_metrics([r for r in res if r.kind == kind])
        assert by_kind[kind] == {"num": 80, "oIoU": alone["oIoU"], "mIoU": alone["mIoU"], "P@0.5": alone["P@0.5"]}
    assert "by_kind" not in compute_metrics([replace(r, kind="") for r in res])  # a dataset without kinds


def test_per_sentence_point_metrics_and_bootstrap_by_kind(tmp_path):
    res = results("shared", 0)
    write_per_sentence(tmp_path, "val", res, 0.35, "original")
    frame = read_per_sentence(per_sentence_path(tmp_path, "val"))
    assert list(frame["kind"]) == [r.kind for r in res]
    s = stats.Sentences(*(frame[c].to_numpy() for c in ("index", "exists", "inter", "union", "kind")))
    by_kind = compute_metrics(res)["by_kind"]["shape"]
    point = stats.point_metrics(s, ["p50@shape", "oiou@shape", "miou@shape"])
    assert point == {"p50@shape": by_kind["P@0.5"], "oiou@shape": by_kind["oIoU"], "miou@shape": by_kind["mIoU"]}
    # the bootstrap of a column over one kind is the bootstrap of the plain column with the others negative
    better = stats.Sentences(s.index, s.exists, np.array([r.inter for r in results("better", 0)]), s.union, s.kind)
    sliced = stats.paired_bootstrap([better], [s], ["oiou@shape"], replicates=200)["oiou@shape"]
    only = s.kind == "shape"
    masked = [replace(x, exists=x.exists & only, kind=None) for x in (better, s)]
    plain = stats.paired_bootstrap(masked[:1], masked[1:], ["oiou"], replicates=200)["oiou"]
    assert (sliced.diff, sliced.low, sliced.high) == pytest.approx((plain.diff, plain.low, plain.high))
    assert sliced.separable and sliced.low > 0
    with pytest.raises(ValueError, match="needs the sentences' kinds"):
        stats.point_metrics(replace(s, kind=None), ["p50@shape"])


def test_column_names_over_a_kind():
    assert is_column("p50@shape") and is_column("oiou@colour+shape") and is_column("miou@none")
    assert not is_column("p60@shape") and not is_column("p50@") and not is_column("p50@a b") and not is_column("x")
    assert label("p50@shape") == "P@0.5 (shape)" and higher_is_better("oiou@shape")


def _write_runs(root: Path, columns: list[str]) -> Path:
    table = {"columns": columns, "delta": ["oiou", "p50@shape", "p50@colour"]}
    return write_runs(root, ("better", "shared"), table, make=results)


def test_a_table_column_over_one_kind_has_intervals_and_paired_differences(tmp_path):
    exp = _write_runs(tmp_path, ["oiou", "p50@shape", "p50@colour"])
    t = tables.table_for_dir(exp)
    assert t.mean.loc["better", "p50@shape"] > t.mean.loc["shared", "p50@shape"]
    assert t.mean.loc["better", "p50@colour"] == t.mean.loc["shared", "p50@colour"]
    st = t.stats
    assert st is not None and st.separable.loc["better", "p50@shape"] and st.diff_low.loc["better", "p50@shape"] > 0
    assert st.diff.loc["better", "p50@colour"] == 0 and not st.separable.loc["better", "p50@colour"]
    text = export.render(t, "markdown")
    header = next(x for x in text.splitlines() if x.startswith("| variant"))
    assert "P@0.5 (shape)" in header and "Δ P@0.5 (shape)" in header
    assert "over the positive sentences of that kind" in text
    assert "P@0.5 (shape)" in export.render(t, "latex") and "p50@shape" in export.render(t, "csv")


def test_an_unknown_column_names_the_kind_form(tmp_path, capsys):
    exp = {
        "name": "bad",
        "base": {"model": "shared-ris-tiny"},
        "runs": [{"name": "a"}],
        "table": {"columns": ["p50@"]},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(exp))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "p50@<kind>" in err, err


def test_synthref_names_each_sentences_word_kinds_and_a_swap_takes_the_other_kind():
    from risbench.data.build import build_dataset
    from risbench.data.synthref_analysis import word_kinds
    from risbench.train.evaluate import SwappedText

    kw = {"image_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3, "train": False}
    ds = build_dataset({"name": "synthref", "num_val": 6}, "val", **kw)
    metas = [ds[i]["meta"] for i in range(len(ds))]
    assert all(m["kind"] == word_kinds(m["sentence"]) for m in metas)
    assert len({m["kind"] for m in metas}) > 1
    swapped = SwappedText(ds)
    for i in range(len(ds)):
        meta = swapped[i]["meta"]
        assert meta["kind"] == metas[meta["swapped_from"]]["kind"] == word_kinds(meta["sentence"])


def test_table_columns_option_shows_a_kind_column_with_its_delta(tmp_path, capsys):
    exp = _write_runs(tmp_path, ["oiou"])
    assert main(["table", str(exp), "--columns", "oiou,p50@shape"]) == 0
    header = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| variant"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "variant", "oIoU", "P@0.5 (shape)", "Δ oIoU", "Δ P@0.5 (shape)",
    ]  # fmt: skip
    assert main(["table", str(exp), "--columns", "oiou,p60@shape"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown column 'p60@shape'" in err and "p50@<kind>" in err, err


def test_kind_weights_draw_a_refs_sentence_of_that_kind_more_often():
    from risbench.data.base import RefDataset
    from risbench.data.build import build_dataset
    from risbench.errors import RisbenchError

    kw = {"image_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3, "train": True, "seed": 3}
    ds = build_dataset({"name": "synthref", "num_train": 40}, "train", **kw)

    def kinds() -> list[str]:
        return [ds[i]["meta"]["kind"] for i in range(len(ds))]

    plain = kinds()
    refs = [ds.load_ref(i) for i in range(len(ds))]
    has_shape = [any(ds.sentence_kind(s.text) == "shape" for s in r.sentences) for r in refs]
    assert sum(has_shape) >= 5 and sum(k == "shape" for k in plain) < sum(has_shape)
    ds.set_kind_weights({"shape": 1e12})
    weighted = kinds()
    assert weighted == kinds()  # the same draw on every call
    assert all(k == "shape" for k, h in zip(weighted, has_shape, strict=True) if h)
    ds.set_kind_weights({})
    assert kinds() == plain
    with pytest.raises(RisbenchError, match="does not name the kinds"):
        RefDataset.set_kind_weights(object.__new__(type("Plain", (RefDataset,), {})), {"shape": 2.0})


def test_kind_weights_must_be_non_negative_numbers():
    from risbench.train.config import TrainConfig

    with pytest.raises(ValueError, match=r"kind_weights\['shape'\] must be a number >= 0"):
        TrainConfig(kind_weights={"shape": -1})


def test_runs_without_kinds_keep_their_other_deltas(tmp_path):
    """Per-sentence files written before kinds: the columns over a kind stay empty, the others keep their Δ."""
    exp = _write_runs(tmp_path, ["oiou", "p50@shape"])
    for metrics in exp.glob("*/metrics.json"):
        data = json.loads(metrics.read_text())
        del data["splits"]["val"]["by_kind"]
        metrics.write_text(json.dumps(data))
        path = per_sentence_path(metrics.parent, "val")
        frame = read_per_sentence(path).drop(columns=["kind"])
        path.write_bytes(encode(frame))
    t = tables.table_for_dir(exp)
    assert t.stats is not None and t.stats.separable.loc["better", "oiou"] is not None
    assert not np.isnan(t.stats.diff.loc["better", "oiou"]) and np.isnan(t.stats.diff.loc["better", "p50@shape"])
    assert "P@0.5 (shape)" in export.render(t, "markdown")
