"""`risbench figure`: which sentences the grid shows (the runs' IoU spread, from per-sentence files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from risbench.errors import RisbenchError
from risbench.runner.figures import disagreement, pick_sentences
from risbench.train.metrics import SentenceResult
from risbench.train.sentences import write_per_sentence


def run_with(root: Path, name: str, counts: list[tuple[int, int]]) -> Path:
    run = root / name
    run.mkdir()
    results = [SentenceResult(i, i, True, a, u, u, u, 100) for i, (a, u) in enumerate(counts)]
    write_per_sentence(run, "val", results, 0.35, "original")
    return run


def test_disagreement_orders_by_the_spread_of_iou(tmp_path: Path) -> None:
    a = run_with(tmp_path, "a", [(10, 10), (5, 10), (0, 10), (0, 0)])  # IoU 100, 50, 0, empty vs empty
    b = run_with(tmp_path, "b", [(9, 10), (5, 10), (8, 10), (0, 0)])  # IoU 90, 50, 80
    table = disagreement([a, b], "val")
    assert table["index"].tolist() == [2, 0, 1, 3]
    assert table["spread"].tolist() == pytest.approx([80.0, 10.0, 0.0, 0.0])
    assert table.set_index("index").loc[3, "run0"] == 100.0  # an empty prediction of an empty target is right
    assert pick_sentences([a, b], "val", 2, "disagree") == [2, 0]
    assert pick_sentences([a], "val", 3, "first") == [0, 1, 2]


def test_bad_picks_name_the_fix(tmp_path: Path) -> None:
    a = run_with(tmp_path, "a", [(1, 2)])
    with pytest.raises(RisbenchError, match="two runs or more"):
        pick_sentences([a], "val", 1, "disagree")
    with pytest.raises(RisbenchError, match="first, disagree"):
        pick_sentences([a], "val", 1, "worst")
    with pytest.raises(RisbenchError, match="risbench eval"):
        disagreement([a, tmp_path], "val")
