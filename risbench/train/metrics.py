"""RIS metrics (the METRICS registry) over per-sentence intersection/union counts.

Evaluation reduces every sentence to one `SentenceResult` (pixel counts at the evaluation
resolution); each registered metric maps the list of results to named numbers. All IoU-type values
and rates are in PERCENT (as the papers' tables are). Definitions (seed_specs §7.1, §6):

- A pixel is foreground when sigmoid(logit) > threshold (strict, as CRIS, where 0.35 comes from).
- Positive sentence (exists = True): I = |pred & gt|, U = |pred | gt|, IoU = I / U, and IoU = 0 when
  U = 0 (LAVT's convention, design.md). So a positive whose ground truth is empty at the evaluation
  resolution (possible only at `resolution: input` for specks) and whose prediction is empty too
  counts 0 in mIoU and adds nothing to oIoU. This never happens at the original resolution.
- oIoU = sum I / sum U over positive sentences; mIoU = mean IoU over positive sentences;
  P@X = percentage of positive sentences with IoU >= X (LAVT's >=), X in 0.5, 0.6, 0.7, 0.8, 0.9.
- Negative sentences (exists = False, R-RefCOCO / SynthRef negatives) are scored only by the robust
  metrics, computed as jianzongwu/robust-ref-seg@e7c7da6f utils/validation.py does, and named
  `rris_*` to say so: per ref, I_ref = sum I and U_ref = sum U over its positives, plus the predicted
  area of every negative with a non-empty prediction (a false positive; an empty one is a true
  negative); r_ref = TN / (TN + FP) (undefined for a ref without negatives), rIoU_ref = I_ref / U_ref
  (undefined when U_ref = 0), mIoU_ref = mean IoU of the ref's positives. Reported: rris_r = mean of
  r_ref, rris_rIoU = mean of rIoU_ref (a mean over refs, not a cumulative ratio), rris_mIoU = mean of
  mIoU_ref, each over the refs where it is defined. Differences from that code: the false-positive
  area is counted at our evaluation resolution (the code uses its 480x480 output for negatives), and
  P@X is the standard per-sentence one (the code compares against a running sum, a bug).
- iou_by_size (the paper's Fig. 6): positives bucketed by target area / image area (at the
  evaluation resolution) into [0, 1), [1, 5), [5, 10), [10, 20), [20, 100] percent; per bucket the
  count, mIoU and oIoU.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from risbench.registry import METRICS

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# target area as a percentage of the image area
DEFAULT_ORDER = ("oIoU", "mIoU", "precision", "counts", "rris", "iou_by_size", "by_kind")
SIZE_BUCKETS = ((0.0, 1.0), (1.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, 100.0))


@dataclass
class SentenceResult:
    """Pixel counts of one evaluated sentence at the evaluation resolution."""

    index: int  # position in the evaluated dataset
    ref_id: Any
    exists: bool
    inter: int
    union: int
    pred_area: int
    gt_area: int
    image_area: int
    sentence: str = ""  # the expression (for per-sentence reports; not used by the metrics)
    sent_id: Any = None  # the dataset's sentence id (for per-sentence files; not used by the metrics)
    kind: str = ""  # the sentence's kind as its dataset classifies it (SynthRef: its word kinds); "" = none

    @property
    def iou(self) -> float:
        return self.inter / self.union if self.union > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_sentence(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    index: int = 0,
    ref_id: Any = None,
    exists: bool = True,
    sentence: str = "",
    sent_id: Any = None,
    kind: str = "",
) -> SentenceResult:
    """Counts for one binary prediction against its binary ground truth (same shape)."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    inter = int(np.logical_and(pred, gt).sum())
    pred_area = int(pred.sum())
    gt_area = int(gt.sum())
    return SentenceResult(
        index=int(index),
        ref_id=ref_id,
        exists=bool(exists),
        inter=inter,
        union=pred_area + gt_area - inter,
        pred_area=pred_area,
        gt_area=gt_area,
        image_area=int(gt.size),
        sentence=sentence,
        sent_id=sent_id,
        kind=kind,
    )


def _pct(x: float) -> float:
    return float(100.0 * x)


def _positives(results: Iterable[SentenceResult]) -> list[SentenceResult]:
    return [r for r in results if r.exists]


@dataclass(frozen=True)
class Column:
    """A table column a metric provides: its label, whether higher is better, and its place in the paper's
    column order (cost columns come first)."""

    label: str
    higher_is_better: bool
    position: int


@METRICS.register("oIoU", columns={"oiou": Column("oIoU", True, 13)})
def overall_iou(results: list[SentenceResult]) -> dict[str, float]:
    """oIoU: sum of intersections over sum of unions over positive sentences (percent)."""
    pos = _positives(results)
    inter = sum(r.inter for r in pos)
    union = sum(r.union for r in pos)
    return {"oIoU": _pct(inter / union) if union > 0 else 0.0}


@METRICS.register("mIoU", columns={"miou": Column("mIoU", True, 14)})
def mean_iou(results: list[SentenceResult]) -> dict[str, float]:
    """mIoU: mean per-sentence IoU over positive sentences, IoU = 0 when the union is empty (percent)."""
    pos = _positives(results)
    return {"mIoU": _pct(sum(r.iou for r in pos) / len(pos)) if pos else 0.0}


@METRICS.register(
    "precision",
    columns={"p50": Column("P@0.5", True, 10), "p70": Column("P@0.7", True, 11), "p90": Column("P@0.9", True, 12)},
)
def precision_at(results: list[SentenceResult]) -> dict[str, float]:
    """P@0.5..0.9: percentage of positive sentences with IoU >= X."""
    pos = _positives(results)
    out = {}
    for x in PRECISION_THRESHOLDS:
        hits = sum(1 for r in pos if r.iou >= x)
        out[f"P@{x:g}"] = _pct(hits / len(pos)) if pos else 0.0
    return out


@METRICS.register("counts")
def counts(results: list[SentenceResult]) -> dict[str, int]:
    """Number of sentences evaluated (all, positive, negative)."""
    pos = sum(1 for r in results if r.exists)
    return {"num_sentences": len(results), "num_positive": pos, "num_negative": len(results) - pos}


def size_bucket_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}%"


@METRICS.register("iou_by_size")
def iou_by_size(results: list[SentenceResult]) -> dict[str, Any]:
    """IoU by target size (target area / image area, percent buckets; the paper's Fig. 6)."""
    buckets: dict[str, list[SentenceResult]] = {size_bucket_name(lo, hi): [] for lo, hi in SIZE_BUCKETS}
    for r in _positives(results):
        frac = 100.0 * r.gt_area / r.image_area if r.image_area else 0.0
        for i, (lo, hi) in enumerate(SIZE_BUCKETS):
            last = i == len(SIZE_BUCKETS) - 1
            if lo <= frac < hi or (last and frac >= lo):
                buckets[size_bucket_name(lo, hi)].append(r)
                break
    out = {}
    for name, items in buckets.items():
        union = sum(r.union for r in items)
        out[name] = {
            "num": len(items),
            "mIoU": _pct(sum(r.iou for r in items) / len(items)) if items else None,
            "oIoU": _pct(sum(r.inter for r in items) / union) if union > 0 else None,
        }
    return {"iou_by_size": out}


@METRICS.register("by_kind")
def by_kind(results: list[SentenceResult]) -> dict[str, Any]:
    """oIoU, mIoU and P@0.5 of the positive sentences of each kind their dataset gives (SynthRef: the kinds
    of words an expression uses, e.g. 'shape' for "the star"), for the table columns `p50@shape` etc.;
    nothing for a dataset without kinds."""
    groups: dict[str, list[SentenceResult]] = defaultdict(list)
    for r in _positives(results):
        if r.kind:
            groups[r.kind].append(r)
    out = {}
    for kind in sorted(groups):
        items = groups[kind]
        union = sum(r.union for r in items)
        out[kind] = {
            "num": len(items),
            "oIoU": _pct(sum(r.inter for r in items) / union) if union > 0 else 0.0,
            "mIoU": _pct(sum(r.iou for r in items) / len(items)),
            "P@0.5": _pct(sum(1 for r in items if r.iou >= 0.5) / len(items)),
        }
    return {"by_kind": out} if out else {}


@METRICS.register("rris", columns={"rris_r": Column("r", True, 15), "rris_riou": Column("rIoU", True, 16)})
def robust_metrics(results: list[SentenceResult]) -> dict[str, Any]:
    """R-RIS robust metrics (their code's definitions): rris_r, rris_rIoU, rris_mIoU; only with negatives."""
    if all(r.exists for r in results):
        return {}
    per_ref: dict[Any, dict[str, Any]] = defaultdict(lambda: {"I": 0, "U": 0, "tn": 0, "fp": 0, "ious": []})
    for r in results:
        ref = per_ref[r.ref_id if r.ref_id is not None else ("index", r.index)]
        if r.exists:
            ref["I"] += r.inter
            ref["U"] += r.union
            ref["ious"].append(r.iou)
        elif r.pred_area > 0:
            ref["fp"] += 1
            ref["U"] += r.pred_area
        else:
            ref["tn"] += 1
    rs, rious, mious = [], [], []
    for ref in per_ref.values():
        if ref["tn"] + ref["fp"] > 0:
            rs.append(ref["tn"] / (ref["tn"] + ref["fp"]))
        if ref["U"] > 0:
            rious.append(ref["I"] / ref["U"])
        if ref["ious"]:
            mious.append(sum(ref["ious"]) / len(ref["ious"]))
    negatives = [r for r in results if not r.exists]
    mean = lambda xs: _pct(sum(xs) / len(xs)) if xs else None  # JSON null when undefined
    return {
        "rris_r": mean(rs),
        "rris_rIoU": mean(rious),
        "rris_mIoU": mean(mious),
        "rris_num_refs": len(per_ref),
        "negative_tn_rate": _pct(sum(1 for r in negatives if r.pred_area == 0) / len(negatives)),
    }


def compute_metrics(results: list[SentenceResult], names: Iterable[str] | None = None) -> dict[str, Any]:
    """All registered metrics (or `names`) over `results`, merged into one dict."""
    out: dict[str, Any] = {}
    if names is None:
        names = [n for n in DEFAULT_ORDER if n in METRICS] + [n for n in METRICS.names() if n not in DEFAULT_ORDER]
    entries = [METRICS.get(n) for n in names]
    fn: Callable[[list[SentenceResult]], dict[str, Any]]
    for entry in entries:
        fn = entry.obj
        out.update(fn(results))
    return out
