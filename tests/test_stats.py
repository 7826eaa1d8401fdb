"""risbench.runner.stats: the t-interval over seeds, the exact recomputation of the metrics from
per-sentence counts, and the paired bootstrap of differences (separable, noise, determinism, speed)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from risbench.runner import stats
from risbench.train.metrics import compute_metrics, score_sentence
from risbench.train.sentences import encode, sentence_frame

METRICS = ["p50", "p70", "p90", "oiou", "miou"]
JSON_NAMES = {"p50": "P@0.5", "p70": "P@0.7", "p90": "P@0.9", "oiou": "oIoU", "miou": "mIoU"}


def random_sentences(rng: np.random.Generator, n: int, negatives: bool = False) -> stats.Sentences:
    union = rng.integers(50, 400, size=n)
    inter = (union * rng.beta(3, 2, size=n)).astype(int)
    union[:3] = 0  # empty union: IoU 0 by convention
    inter[:3] = 0
    exists = rng.random(n) > 0.2 if negatives else np.ones(n, bool)
    return stats.Sentences(np.arange(n), exists, inter, union)


def test_t_quantile_against_the_t_distribution() -> None:
    """P(0 < T < t_{0.975,df}) = 0.475, by numerical integration of the t density."""
    for df in [1, 2, 3, 5, 10, 29, 30, 31, 45, 200]:
        q = stats.t_quantile_975(df)
        x = np.linspace(0, q, 100_001)
        c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
        assert np.trapezoid(c * (1 + x * x / df) ** (-(df + 1) / 2), x) == pytest.approx(0.475, abs=1e-6), df
    assert stats.t_quantile_975(2) == pytest.approx(4.3027, abs=1e-4)
    assert stats.t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-5)


def test_seed_interval_by_hand() -> None:
    ci = stats.seed_interval([60.0, 62.0, 64.0])
    assert (ci.mean, ci.std, ci.n) == (62.0, 2.0, 3)
    half = 4.302652729749464 * 2.0 / math.sqrt(3)  # t_{0.975,2} * s / sqrt(n)
    assert ci.low == pytest.approx(62.0 - half) and ci.high == pytest.approx(62.0 + half)
    assert ci.half_width == pytest.approx(4.9683, abs=1e-4)
    two = stats.seed_interval([1.0, 2.0])  # t_{0.975,1} = 12.706; s = 0.7071
    assert two.half_width == pytest.approx(12.706204736174704 * math.sqrt(0.5) / math.sqrt(2))
    one = stats.seed_interval([66.0])
    assert (one.mean, one.n, one.std, one.low, one.high, one.half_width) == (66.0, 1, None, None, None, None)
    assert stats.seed_interval([]).n == 0


def test_recomputed_metrics_equal_the_runs_exactly() -> None:
    """No resampling: oIoU, mIoU and P@X from the per-sentence counts are bit-equal to metrics.py's."""
    rng = np.random.default_rng(5)
    results = []
    for i in range(300):
        gt = rng.random((12, 12)) > rng.uniform(0.3, 0.95)
        pred = gt ^ (rng.random((12, 12)) > rng.uniform(0.6, 1.0))
        if i % 37 == 0:
            gt[:] = pred[:] = False  # empty union
        results.append(score_sentence(pred, gt, index=i, exists=i % 11 != 5))
    reported = compute_metrics(results)
    s = stats.Sentences(
        np.array([r.index for r in results]),
        np.array([r.exists for r in results]),
        np.array([r.inter for r in results]),
        np.array([r.union for r in results]),
    )
    ours = stats.point_metrics(s, METRICS)
    for m in METRICS:
        assert ours[m] == reported[JSON_NAMES[m]], m  # exactly, not approximately
    # the bootstrap's vectorised path, with every sentence drawn once, agrees to rounding
    sums = np.ones(len(s)) @ stats._features(s, METRICS)
    vec = stats._metrics_from_sums(sums, METRICS)
    assert vec == pytest.approx([ours[m] for m in METRICS], rel=1e-12)


def test_truly_better_variant_is_separable() -> None:
    rng = np.random.default_rng(1)
    ref = [random_sentences(rng, 400) for _ in range(3)]
    # the variant gains 5 pixels of intersection on every sentence of every seed (union unchanged)
    better = [stats.Sentences(s.index, s.exists, np.minimum(s.inter + 5, s.union), s.union) for s in ref]
    out = stats.paired_bootstrap(better, ref, ["oiou", "miou"], replicates=500)
    for m in ("oiou", "miou"):
        assert out[m].diff > 0 and out[m].low > 0 and out[m].separable, m
    worse = stats.paired_bootstrap(ref, better, ["oiou"], replicates=500)["oiou"]
    assert worse.high < 0 and worse.separable


def test_pure_noise_is_rarely_separable() -> None:
    """Independent IoUs from one distribution: the 95% interval covers 0 for the fixed case, and marks
    at most a few of 20 independent cases (5% expected)."""
    marked = 0
    for data_seed in range(20):
        rng = np.random.default_rng(100 + data_seed)
        a = [random_sentences(rng, 300) for _ in range(3)]
        b = [random_sentences(rng, 300) for _ in range(3)]
        out = stats.paired_bootstrap(a, b, ["oiou"], replicates=400)["oiou"]
        assert out.low <= out.diff <= out.high
        marked += out.separable
        if data_seed == 0:
            assert not out.separable and out.low < 0 < out.high
    assert marked <= 3


def test_bootstrap_is_deterministic_and_handles_negatives() -> None:
    rng = np.random.default_rng(2)
    a = [random_sentences(rng, 200, negatives=True) for _ in range(2)]
    b = [stats.Sentences(s.index, s.exists, s.inter // 2, s.union) for s in a]
    first = stats.paired_bootstrap(a, b, METRICS, replicates=300, seed=7)
    assert first == stats.paired_bootstrap(a, b, METRICS, replicates=300, seed=7)
    assert first != stats.paired_bootstrap(a, b, METRICS, replicates=300, seed=8)
    per_seed = [(stats.point_metrics(x, METRICS), stats.point_metrics(y, METRICS)) for x, y in zip(a, b, strict=True)]
    exact = {m: np.mean([pa[m] - pb[m] for pa, pb in per_seed]) for m in METRICS}
    assert {m: d.diff for m, d in first.items()} == pytest.approx(exact)
    none = stats.paired_bootstrap(a, b, METRICS, replicates=0)
    assert none["oiou"].low is None and not none["oiou"].separable
    with pytest.raises(ValueError):
        stats.paired_bootstrap(a, b[:1], METRICS)


def test_bootstrap_speed_4_variants_3_seeds_1500_sentences() -> None:
    rng = np.random.default_rng(3)
    runs = [[random_sentences(rng, 1500) for _ in range(3)] for _ in range(5)]
    t0 = time.perf_counter()
    for variant in runs[:4]:
        stats.paired_bootstrap(variant, runs[4], METRICS, replicates=2000)
    assert time.perf_counter() - t0 < 30  # a few seconds on 2 busy cores


def test_per_sentence_file_is_small() -> None:
    from risbench.train.metrics import SentenceResult

    rng = np.random.default_rng(4)
    results = []
    for i in range(1500):
        union = int(rng.integers(1000, 60000))
        inter = int(union * rng.random())
        results.append(SentenceResult(i, f"ref{i // 3}", True, inter, union, union, union, 300000))
    data = encode(sentence_frame(results, 0.35, "original"))
    assert len(data) < 40_000, len(data)
    assert data == encode(sentence_frame(list(reversed(results)), 0.35, "original"))  # sorted, reproducible
