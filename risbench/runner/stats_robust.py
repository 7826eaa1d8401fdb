"""Statistics of the robust metrics (rris_r, rris_riou) for the experiment tables (numpy only, no torch).

The R-RIS code's r and rIoU are means over refs of per-ref quantities (risbench.train.metrics), so their
bootstrap resamples refs, not sentences: every sentence of a ref (its positives and its negatives) moves
together. The rest follows risbench.runner.stats.paired_bootstrap: the same drawn refs for both rows and
every seed (paired), seeds drawn with replacement, a percentile 95% interval.
- `ref_groups`: each sentence's ref as a dense code, in order of first appearance.
- `robust_point`: rris_r / rris_riou recomputed from per-sentence counts, as risbench.train.metrics does.
- `paired_ref_bootstrap`: variant − reference with that two-level bootstrap over refs and seeds.
Why refs: docs/decisions.md ("Statistics in the tables").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from risbench.runner.stats import DEFAULT_REPLICATES, DEFAULT_SEED, Difference, Sentences, bootstrap_draws

ROBUST = ("rris_r", "rris_riou")


def ref_groups(ref_ids: Sequence[object] | None, index: np.ndarray) -> np.ndarray:
    """Dense int codes of each sentence's ref, numbered in order of first appearance; a sentence without a
    ref id is its own ref (as risbench.train.metrics keys it by its index)."""
    if ref_ids is None:
        keys = [("index", int(i)) for i in index]
    else:
        keys = [("index", int(i)) if pd.isna(r) else ("ref", str(r)) for r, i in zip(ref_ids, index, strict=True)]
    codes: dict[tuple[str, object], int] = {}
    return np.asarray([codes.setdefault(k, len(codes)) for k in keys], dtype=int)


def _per_ref(s: Sentences, groups: np.ndarray) -> np.ndarray:
    """(refs, 4) per ref: [r defined, r_ref, rIoU defined, rIoU_ref], the value 0 where undefined.

    Per ref: I and U summed over its positives, U plus the predicted area of each negative with a non-empty
    prediction (for a negative the per-sentence `union` is its predicted area: the target is empty);
    r_ref = TN / (TN + FP) where it has negatives, rIoU_ref = I / U where U > 0."""
    n_refs = int(groups.max()) + 1 if len(groups) else 0
    pos = s.exists.astype(bool)
    fp = ~pos & (s.union > 0)
    tn = ~pos & (s.union == 0)
    total = lambda x: np.bincount(groups, weights=x.astype(float), minlength=n_refs)  # noqa: E731
    inter, union = total(np.where(pos, s.inter, 0)), total(np.where(pos | fp, s.union, 0))
    n_tn, n_fp = total(tn), total(fp)
    r_def, u_def = (n_tn + n_fp) > 0, union > 0
    r = np.divide(n_tn, n_tn + n_fp, out=np.zeros(n_refs), where=r_def)
    riou = np.divide(inter, union, out=np.zeros(n_refs), where=u_def)
    return np.stack([r_def.astype(float), r, u_def.astype(float), riou], axis=1)


def _from_sums(sums: np.ndarray, metrics: Sequence[str]) -> np.ndarray:
    """(..., M) metric values in percent from (..., 4) resampled per-ref sums (NaN where no ref defines it)."""
    out = []
    for m in metrics:
        num, den = (sums[..., 1], sums[..., 0]) if m == "rris_r" else (sums[..., 3], sums[..., 2])
        out.append(100.0 * np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0))
    return np.stack(out, axis=-1)


def robust_point(s: Sentences, groups: np.ndarray, metrics: Sequence[str] = ROBUST) -> dict[str, float | None]:
    """rris_r / rris_riou of one run (None where no ref defines it), equal to risbench.train.metrics' values
    within float rounding (the same per-ref quantities, averaged over the refs that define them)."""
    for m in metrics:
        if m not in ROBUST:
            raise ValueError(f"no per-ref definition of metric '{m}'")
    per_ref = _per_ref(s, groups)
    values = _from_sums(per_ref.sum(axis=0), metrics)
    return {m: None if np.isnan(v) else float(v) for m, v in zip(metrics, values, strict=True)}


def paired_ref_bootstrap(
    variant: Sequence[Sentences],
    reference: Sequence[Sentences],
    groups: np.ndarray,
    metrics: Sequence[str] = ROBUST,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Difference]:
    """Paired two-level bootstrap of variant − reference for rris_r / rris_riou, over refs and seeds.

    `variant[k]` and `reference[k]` are the runs of the k-th common seed, all on the same sentences, whose
    refs are `groups` (from `ref_groups`). Each replicate draws the refs with replacement (the same refs for
    both rows and every seed) and the seeds with replacement (seed k of the variant with seed k of the
    reference), recomputes each metric per drawn seed and averages the per-seed differences; the interval
    is the 2.5 / 97.5 percentile. A metric undefined in some run has no interval; a replicate whose drawn
    refs leave it undefined is dropped."""
    if len(variant) != len(reference) or not variant:
        raise ValueError("paired_ref_bootstrap needs the same, non-zero number of seeds on both sides")
    if any(len(s) != len(groups) for s in [*variant, *reference]):
        raise ValueError("paired_ref_bootstrap needs the same sentences in every run")
    metrics = list(metrics)
    per_ref = [_per_ref(s, groups) for s in [*variant, *reference]]
    n_seeds, n_refs = len(variant), per_ref[0].shape[0]
    values = _from_sums(np.stack([p.sum(axis=0) for p in per_ref]), metrics)  # (2S, M)
    point = (values[:n_seeds] - values[n_seeds:]).mean(axis=0)  # NaN where some run leaves it undefined
    if replicates <= 0:
        return {m: Difference(float(point[j]), None, None) for j, m in enumerate(metrics)}
    counts, seed_draws = bootstrap_draws(n_refs, n_seeds, replicates, seed)
    sums = counts @ np.concatenate(per_ref, axis=1)  # (B, 2S·4)
    reps_all = _from_sums(sums.reshape(replicates, 2 * n_seeds, 4), metrics)  # (B, 2S, M)
    diffs = reps_all[:, :n_seeds] - reps_all[:, n_seeds:]
    reps = diffs[np.arange(replicates)[:, None], seed_draws].mean(axis=1)  # (B, M)
    out = {}
    for j, m in enumerate(metrics):
        kept = reps[:, j][~np.isnan(reps[:, j])]
        low, high = np.percentile(kept, [2.5, 97.5]) if len(kept) and not np.isnan(point[j]) else (None, None)
        out[m] = Difference(float(point[j]), None if low is None else float(low), None if high is None else float(high))
    return out
