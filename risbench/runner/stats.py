"""Statistics for the experiment tables (numpy only, no torch).

- `seed_interval`: mean, std (ddof=1), n and the Student-t 95% interval of the mean over seeds.
- `point_metrics`: oIoU / mIoU / P@X recomputed from per-sentence counts, exactly as
  risbench.train.metrics computes them (same operations in the same order, so the values are equal).
- `paired_bootstrap`: a variant's difference from the reference row with a paired, two-level bootstrap
  95% percentile interval over evaluation sentences and seeds.
All metric values are in percent, as in metrics.json. Why paired, why two levels, why percentile:
docs/decisions.md ("Statistics in the tables").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ACCURACY = ("p50", "p60", "p70", "p80", "p90", "oiou", "miou")
DEFAULT_REPLICATES = 2000
DEFAULT_SEED = 0

# t_{0.975, df} for df = 1..30 (two-sided 95%); beyond, a Cornish-Fisher expansion around the normal
T975 = (
    12.706204736174704, 4.302652729749464, 3.182446305284263, 2.776445105197799, 2.570581835636314,
    2.446911851144969, 2.364624251592785, 2.306004135204166, 2.262157162798205, 2.228138851986274,
    2.200985160082949, 2.178812829663418, 2.160368656461013, 2.144786687916926, 2.131449545559323,
    2.119905299221011, 2.109815577833181, 2.100922040241036, 2.093024054408263, 2.085963447265837,
    2.079613844727662, 2.073873067904015, 2.068657610419041, 2.063898561628021, 2.059538552753294,
    2.055529438642871, 2.051830516480283, 2.048407141795244, 2.045229642132703, 2.042272456301238,
)  # fmt: skip
Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (table for df <= 30; beyond, the
    Cornish-Fisher expansion to 1/df^3, within 1e-5 of the exact value there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z, v = Z975, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


@dataclass
class SeedInterval:
    """Mean over seeds, sample std (ddof=1), number of seeds and the 95% t-interval of the mean (None
    bounds when n < 2: one seed gives no interval)."""

    mean: float
    std: float | None
    n: int
    low: float | None
    high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2


def seed_interval(values: Sequence[float]) -> SeedInterval:
    """mean ± t_{0.975, n-1} · std / sqrt(n) over the per-seed values (NaNs dropped)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return SeedInterval(math.nan, None, 0, None, None)
    mean = float(x.mean())
    if n < 2:
        return SeedInterval(mean, None, 1, None, None)
    std = float(x.std(ddof=1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return SeedInterval(mean, std, n, mean - half, mean + half)


def precision_threshold(metric: str) -> float | None:
    """'p50' -> 0.5 (the IoU threshold of P@X), None for other metrics."""
    return int(metric[1:]) / 100 if metric.startswith("p") and metric[1:].isdigit() else None


@dataclass
class Sentences:
    """Per-sentence counts of one run on one split (positives and negatives, in dataset order)."""

    index: np.ndarray  # int, position in the split
    exists: np.ndarray  # bool
    inter: np.ndarray  # int
    union: np.ndarray  # int
    kind: np.ndarray | None = None  # str, the sentence's kind (metrics `<m>@<kind>`); None: the file has none

    def __len__(self) -> int:
        return len(self.index)

    def positives(self, metric: str) -> np.ndarray:
        """(n,) bool: the sentences `metric` is computed over (`p50@shape`: the positives of kind 'shape')."""
        pos = self.exists.astype(bool)
        _, sep, kind = metric.partition("@")
        if not sep:
            return pos
        if self.kind is None:
            raise ValueError(f"metric '{metric}' needs the sentences' kinds; this per-sentence file has none")
        return pos & (self.kind == kind)


def point_metrics(s: Sentences, metrics: Sequence[str]) -> dict[str, float]:
    """Each metric over the positive sentences, as risbench.train.metrics computes it: oIoU = 100·ΣI/ΣU
    (0 when ΣU = 0), mIoU = 100·mean(I/U) (IoU 0 when U = 0; summed left to right, as Python's sum),
    P@X = 100·(number with IoU >= X) / (number of positives); `<m>@<kind>` the same over the positives of
    that kind, as the `by_kind` metric computes it."""
    out = {}
    for full in metrics:
        pos = s.positives(full)
        m = full.partition("@")[0]
        inter = [int(v) for v in s.inter[pos]]
        union = [int(v) for v in s.union[pos]]
        ious = [i / u if u > 0 else 0.0 for i, u in zip(inter, union, strict=True)]
        x = precision_threshold(m)
        if m == "oiou":
            out[full] = float(100.0 * (sum(inter) / sum(union))) if sum(union) > 0 else 0.0
        elif m == "miou":
            out[full] = float(100.0 * (sum(ious) / len(ious))) if ious else 0.0
        elif x is not None:
            out[full] = float(100.0 * (sum(1 for v in ious if v >= x) / len(ious))) if ious else 0.0
        else:
            raise ValueError(f"no per-sentence definition of metric '{full}'")
    return out


def _features(s: Sentences, metrics: Sequence[str]) -> np.ndarray:
    """(n, 2M) per-sentence columns whose resampled sums give every metric as 100 · numerator / denominator:
    oIoU (I, U), mIoU (IoU, 1), P@X (IoU >= X, 1), each over the sentences the metric counts (zero elsewhere)."""
    cols = []
    for full in metrics:
        pos = s.positives(full)
        m = full.partition("@")[0]
        inter = np.where(pos, s.inter, 0).astype(float)
        union = np.where(pos, s.union, 0).astype(float)
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        if m == "oiou":
            cols += [inter, union]
        elif m == "miou":
            cols += [iou, pos.astype(float)]
        elif (x := precision_threshold(m)) is not None:
            cols += [((iou >= x) & pos).astype(float), pos.astype(float)]
        else:
            raise ValueError(f"no per-sentence definition of metric '{full}'")
    return np.stack(cols, axis=1)


def _metrics_from_sums(sums: np.ndarray, metrics: Sequence[str]) -> np.ndarray:
    """(..., M) metric values from (..., 2M) resampled feature sums (same layout as `_features`)."""
    num, den = sums[..., 0::2], sums[..., 1::2]
    return 100.0 * np.divide(num, den, out=np.zeros_like(num), where=den > 0)


@dataclass
class Difference:
    """variant − reference for one metric: the point estimate (mean over the paired seeds of the
    per-seed differences), the bootstrap percentile interval (None without replicates) and whether that
    interval excludes 0."""

    diff: float
    low: float | None
    high: float | None

    @property
    def separable(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def bootstrap_draws(n: int, n_seeds: int, replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The draws of a paired two-level bootstrap: (replicates, n) how often each of n units is drawn in each
    replicate (so resampled sums become one matrix product) and (replicates, n_seeds) the seeds drawn."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(replicates, n))
    counts = np.bincount((draws + n * np.arange(replicates)[:, None]).ravel(), minlength=replicates * n)
    seed_draws = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    return counts.reshape(replicates, n).astype(float), seed_draws


def paired_bootstrap(
    variant: Sequence[Sentences],
    reference: Sequence[Sentences],
    metrics: Sequence[str],
    replicates: int = DEFAULT_REPLICATES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Difference]:
    """Paired two-level bootstrap of variant − reference for each metric.

    `variant[k]` and `reference[k]` are the runs of the same seed (the k-th common seed), all evaluated on
    the same n sentences. Each replicate draws n sentence indices with replacement (the same for both rows
    and every seed: paired) and S seeds with replacement (seed k of the variant always with seed k of the
    reference), recomputes each metric per drawn seed from the resampled counts and averages the per-seed
    differences. The interval is the 2.5 / 97.5 percentile of the replicates (numpy's linear method); the
    draws depend only on (seed, n, S, replicates), so equal inputs give equal intervals.
    """
    if len(variant) != len(reference) or not variant:
        raise ValueError("paired_bootstrap needs the same, non-zero number of seeds on both sides")
    n = len(reference[0])
    if any(len(s) != n for s in [*variant, *reference]):
        raise ValueError("paired_bootstrap needs the same sentences in every run")
    metrics = list(metrics)
    per_seed = [
        {m: a[m] - b[m] for m in metrics}
        for a, b in zip(
            (point_metrics(s, metrics) for s in variant), (point_metrics(s, metrics) for s in reference), strict=True
        )
    ]
    point = {m: sum(d[m] for d in per_seed) / len(per_seed) for m in metrics}
    if replicates <= 0:
        return {m: Difference(point[m], None, None) for m in metrics}
    n_seeds = len(variant)
    counts, seed_draws = bootstrap_draws(n, n_seeds, replicates, seed)
    feats = [_features(s, metrics) for s in [*variant, *reference]]
    width = feats[0].shape[1]
    sums = counts @ np.concatenate(feats, axis=1)  # (B, 2·S·width)
    values = _metrics_from_sums(sums.reshape(replicates, 2 * n_seeds, width), metrics)  # (B, 2S, M)
    diffs = values[:, :n_seeds] - values[:, n_seeds:]  # (B, S, M): per seed, variant − reference
    reps = diffs[np.arange(replicates)[:, None], seed_draws].mean(axis=1)  # (B, M)
    low, high = np.percentile(reps, [2.5, 97.5], axis=0)
    return {m: Difference(point[m], float(low[j]), float(high[j])) for j, m in enumerate(metrics)}
