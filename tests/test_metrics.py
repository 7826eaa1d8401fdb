"""Metrics on hand-computed cases (risbench.train.metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from risbench.train.metrics import SentenceResult, compute_metrics, score_sentence


def mask(shape, *boxes):
    m = np.zeros(shape, dtype=np.uint8)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = 1
    return m


def test_score_sentence_counts():
    pred = mask((4, 4), (0, 2, 0, 2))  # 4 px
    gt = mask((4, 4), (0, 2, 1, 3))  # 4 px, overlap 2
    r = score_sentence(pred, gt)
    assert (r.inter, r.union, r.pred_area, r.gt_area, r.image_area) == (2, 6, 4, 4, 16)
    assert r.iou == pytest.approx(1 / 3)


def test_empty_prediction_and_empty_gt():
    gt = mask((5, 5), (0, 2, 0, 2))
    empty_pred = score_sentence(np.zeros((5, 5)), gt)
    assert (empty_pred.inter, empty_pred.union, empty_pred.iou) == (0, 4, 0.0)
    empty_gt = score_sentence(mask((5, 5), (0, 1, 0, 3)), np.zeros((5, 5)))
    assert (empty_gt.inter, empty_gt.union, empty_gt.iou) == (0, 3, 0.0)
    m = compute_metrics([empty_pred, empty_gt])
    assert m["oIoU"] == 0.0 and m["mIoU"] == 0.0 and m["P@0.5"] == 0.0


def test_both_empty_positive_counts_zero():
    # design.md: IoU = 0 when U = 0 (LAVT); it adds nothing to oIoU but counts in mIoU's denominator
    both = score_sentence(np.zeros((3, 3)), np.zeros((3, 3)))
    assert both.union == 0 and both.iou == 0.0
    perfect = score_sentence(mask((3, 3), (0, 1, 0, 1)), mask((3, 3), (0, 1, 0, 1)))
    m = compute_metrics([both, perfect])
    assert m["oIoU"] == pytest.approx(100.0)
    assert m["mIoU"] == pytest.approx(50.0)
    assert m["num_sentences"] == 2 and m["num_positive"] == 2


def test_oiou_vs_miou_differ_and_different_image_sizes():
    # a big image with a good prediction and a small one with a poor prediction
    big = score_sentence(mask((100, 100), (0, 50, 0, 20)), mask((100, 100), (0, 50, 0, 18)))  # I 900 U 1000
    small = score_sentence(mask((10, 12), (0, 1, 0, 4)), mask((10, 12), (0, 1, 3, 7)))  # I 1 U 7
    assert (big.inter, big.union) == (900, 1000)
    assert (small.inter, small.union) == (1, 7)
    m = compute_metrics([big, small])
    assert m["oIoU"] == pytest.approx(100 * 901 / 1007)
    assert m["mIoU"] == pytest.approx(100 * (0.9 + 1 / 7) / 2)
    assert m["oIoU"] > 85 > m["mIoU"]
    assert m["P@0.5"] == pytest.approx(50.0) and m["P@0.9"] == pytest.approx(50.0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        score_sentence(np.zeros((3, 3)), np.zeros((3, 4)))


def test_precision_boundary_is_inclusive():
    def res(i, u):
        return SentenceResult(0, None, True, i, u, u, u, 100)

    results = [res(1, 2), res(6, 10), res(7, 10), res(4, 5), res(9, 10), res(89, 100)]  # .5 .6 .7 .8 .9 .89
    m = compute_metrics(results, ["precision"])
    n = len(results)
    assert m["P@0.5"] == pytest.approx(100 * 6 / n)
    assert m["P@0.6"] == pytest.approx(100 * 5 / n)
    assert m["P@0.7"] == pytest.approx(100 * 4 / n)
    assert m["P@0.8"] == pytest.approx(100 * 3 / n)
    assert m["P@0.9"] == pytest.approx(100 * 1 / n)


def test_negative_sentences_rris_definitions():
    # ref 1: one positive (I 3, U 4), one negative predicted empty (TN), one negative with 2 px (FP)
    # ref 2: one positive (I 1, U 2), no negatives
    pos1 = SentenceResult(0, 1, True, 3, 4, 3, 4, 100)
    tn1 = score_sentence(np.zeros((10, 10)), np.zeros((10, 10)), index=1, ref_id=1, exists=False)
    fp1 = score_sentence(mask((10, 10), (0, 1, 0, 2)), np.zeros((10, 10)), index=2, ref_id=1, exists=False)
    pos2 = SentenceResult(3, 2, True, 1, 2, 1, 2, 100)
    m = compute_metrics([pos1, tn1, fp1, pos2])
    # standard metrics use the positives only
    assert m["oIoU"] == pytest.approx(100 * 4 / 6)
    assert m["mIoU"] == pytest.approx(100 * (0.75 + 0.5) / 2)
    assert (m["num_sentences"], m["num_positive"], m["num_negative"]) == (4, 2, 2)
    # R-RIS: r per ref over refs with negatives; rIoU per ref with FP area added to U, mean over refs
    assert m["rris_r"] == pytest.approx(50.0)
    assert m["rris_rIoU"] == pytest.approx(100 * (3 / (4 + 2) + 1 / 2) / 2)
    assert m["rris_mIoU"] == pytest.approx(100 * (0.75 + 0.5) / 2)
    assert m["negative_tn_rate"] == pytest.approx(50.0)


def test_no_negatives_no_rris_keys():
    m = compute_metrics([SentenceResult(0, 1, True, 1, 1, 1, 1, 4)])
    assert not any(k.startswith("rris") for k in m)


def test_iou_by_size_buckets():
    # target fractions: 0.5% (small), 3%, 30%
    tiny = SentenceResult(0, None, True, 1, 2, 1, 1, 200)
    mid = SentenceResult(1, None, True, 3, 3, 3, 3, 100)
    big = SentenceResult(2, None, True, 20, 40, 30, 30, 100)
    b = compute_metrics([tiny, mid, big], ["iou_by_size"])["iou_by_size"]
    assert b["0-1%"] == {"num": 1, "mIoU": pytest.approx(50.0), "oIoU": pytest.approx(50.0)}
    assert b["1-5%"]["num"] == 1 and b["1-5%"]["mIoU"] == pytest.approx(100.0)
    assert b["5-10%"] == {"num": 0, "mIoU": None, "oIoU": None}
    assert b["20-100%"]["oIoU"] == pytest.approx(50.0)
    assert b["20-100%"]["num"] == 1
