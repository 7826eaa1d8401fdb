"""The statistics of one experiment table: t-intervals over seeds for every cell, and each variant's
difference from the reference row with a paired bootstrap interval (risbench.runner.stats), computed
from the runs' per-sentence files (risbench.train.sentences). Runs without those files keep their
intervals over seeds; their difference cells carry the reason instead (`TableStats.note`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from risbench.errors import UnknownNameError, unknown_name_message
from risbench.runner import stats
from risbench.runner.columns import split_column
from risbench.runner.stats_robust import ROBUST, paired_ref_bootstrap, ref_groups, robust_point

DEFAULT_DELTA = ("oiou", "miou")


@dataclass
class TableStats:
    """Per variant x column: the 95% t-interval over seeds (NaN without one); per variant x accuracy
    column: variant − reference and its bootstrap interval, `separable` when that interval excludes 0."""

    reference: str | None
    ci_low: pd.DataFrame
    ci_high: pd.DataFrame
    diff: pd.DataFrame
    diff_low: pd.DataFrame
    diff_high: pd.DataFrame
    separable: pd.DataFrame
    note: dict[str, str] = field(default_factory=dict)  # variant -> why its differences are missing
    diff_seeds: dict[str, int] = field(default_factory=dict)  # variant -> paired seeds used
    sentences: dict[str, int] = field(default_factory=dict)  # variant -> sentences resampled
    refs: dict[str, int] = field(default_factory=dict)  # variant -> refs resampled (r, rIoU)
    replicates: int = stats.DEFAULT_REPLICATES
    delta_columns: list[str] = field(default_factory=list)  # the Δ columns Markdown / LaTeX show

    def half_width(self, variant: str, col: str) -> float:
        return (self.ci_high.loc[variant, col] - self.ci_low.loc[variant, col]) / 2


def resolve_reference(spec: dict[str, Any], variants: list[str], override: str | None = None) -> str | None:
    """The reference row: `override` (risbench table --reference), else table.reference, else the last
    variant of the experiment (in every shipped experiment file the proposed Shared-RIS variant)."""
    name = override or spec.get("reference")
    if name is None:
        return variants[-1] if variants else None
    if name not in variants:
        raise UnknownNameError("table.reference: " + unknown_name_message("run", str(name), variants))
    return str(name)


@dataclass
class RunSentences:
    """One run's per-sentence file: its counts (None when missing), the setting it was evaluated at,
    the sentence ids (as text; empty when the file has none), each sentence's ref (dense codes) and why
    the counts are missing."""

    counts: stats.Sentences | None
    setting: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    reason: str = ""
    groups: np.ndarray | None = None


def _sentences(run_dir: str | Path, split: str) -> RunSentences:
    from risbench.train.sentences import per_sentence_path, read_per_sentence

    frame = read_per_sentence(per_sentence_path(run_dir, split))
    if frame is None:
        return RunSentences(None, reason="no per-sentence results")
    setting = tuple(str(frame[c].iloc[0]) if c in frame and len(frame) else "" for c in ("threshold", "resolution"))
    ids = tuple(frame["sent_id"].astype(str)) if "sent_id" in frame else ()
    counts = stats.Sentences(
        frame["index"].to_numpy(int), frame["exists"].to_numpy(bool), frame["inter"].to_numpy(int),
        frame["union"].to_numpy(int), frame["kind"].to_numpy(str) if "kind" in frame else None,
    )  # fmt: skip
    refs = list(frame["ref_id"]) if "ref_id" in frame else None
    return RunSentences(counts, setting, ids, groups=ref_groups(refs, counts.index))


def _check_against_metrics(found: RunSentences, reported: dict[str, float]) -> bool:
    """Whether the per-sentence file reproduces the run's metrics.json (a stale file would not)."""
    assert found.counts is not None and found.groups is not None
    plain = {m: v for m, v in reported.items() if m not in ROBUST}
    try:
        ours: dict[str, float | None] = dict(stats.point_metrics(found.counts, list(plain)))
    except ValueError:  # a metric by kind, from a file without the kinds
        return False
    robust = [m for m in reported if m in ROBUST]
    if robust:
        ours.update(robust_point(found.counts, found.groups, robust))
    return all(
        ours[m] is not None and math.isclose(ours[m], v, rel_tol=1e-9, abs_tol=1e-9)  # type: ignore[arg-type]
        for m, v in reported.items()
    )


def compute_stats(
    selected: pd.DataFrame,
    variants: list[str],
    columns: list[str],
    spec: dict[str, Any],
    reference: str | None,
    replicates: int = stats.DEFAULT_REPLICATES,
) -> TableStats:
    """`selected`: the tidy rows the table shows (variant, seed, metric, value; run_dir when known)."""
    ci_low = pd.DataFrame(math.nan, index=variants, columns=columns)
    ci_high = ci_low.copy()
    for (variant, metric), values in selected.groupby(["variant", "metric"])["value"]:
        if variant in ci_low.index and metric in columns:
            ci = stats.seed_interval(list(values))
            if ci.low is not None:
                ci_low.loc[variant, metric], ci_high.loc[variant, metric] = ci.low, ci.high
    acc = [c for c in columns if split_column(c)[0] in stats.ACCURACY or c in ROBUST]
    diff = pd.DataFrame(math.nan, index=variants, columns=acc)
    out = TableStats(
        reference, ci_low, ci_high, diff, diff.copy(), diff.copy(),
        pd.DataFrame(False, index=variants, columns=acc), replicates=replicates,
        delta_columns=[c for c in spec.get("delta", DEFAULT_DELTA) if c in acc],
    )  # fmt: skip
    if not acc or reference is None:
        return out
    split = spec.get("split", "val")
    runs: dict[str, dict[int, RunSentences]] = {}
    accuracy_rows = selected[selected["metric"].isin(acc) & (selected["split"] == split)]
    for (variant, seed), rows in accuracy_rows.groupby(["variant", "seed"]):
        run_dir = rows["run_dir"].iloc[0] if "run_dir" in rows else None
        found = (
            _sentences(run_dir, split) if run_dir is not None else RunSentences(None, reason="no per-sentence results")
        )
        reported = dict(zip(rows["metric"], rows["value"], strict=True))
        if found.counts is not None and not _check_against_metrics(found, reported):
            found = RunSentences(None, reason="per-sentence file does not match metrics.json")
        runs.setdefault(variant, {})[int(seed)] = found
    ref_runs = {s: r for s, r in runs.get(reference, {}).items() if r.counts is not None}
    for variant in variants:
        if variant == reference:
            continue
        mine = runs.get(variant, {})
        usable = {s: r for s, r in mine.items() if r.counts is not None}
        common = sorted(set(usable) & set(ref_runs))
        if not mine:
            out.note[variant] = "no runs"
        elif not usable:
            out.note[variant] = next(iter(mine.values())).reason
        elif not ref_runs:
            out.note[variant] = f"no per-sentence results for {reference}"
        elif not common:
            out.note[variant] = f"no seed in common with {reference}"
        elif not _same_sentences([(usable[s], ref_runs[s]) for s in common]):
            out.note[variant] = f"other sentences or settings than {reference}"
        elif len(ref_runs[common[0]].counts) == 0:
            out.note[variant] = "no evaluated sentences"
        if variant in out.note:
            continue
        mine_counts, ref_counts = [usable[s].counts for s in common], [ref_runs[s].counts for s in common]
        plain, robust = [m for m in acc if m not in ROBUST], [m for m in acc if m in ROBUST]
        if any(c.kind is None for c in [*mine_counts, *ref_counts]):  # files written before kinds: no Δ by kind
            plain = [m for m in plain if split_column(m)[1] is None]
        result = stats.paired_bootstrap(mine_counts, ref_counts, plain, replicates=replicates) if plain else {}
        if robust:
            groups = ref_runs[common[0]].groups
            assert groups is not None
            result.update(paired_ref_bootstrap(mine_counts, ref_counts, groups, robust, replicates=replicates))
            out.refs[variant] = int(groups.max()) + 1 if len(groups) else 0
        for m, d in result.items():
            out.diff.loc[variant, m] = d.diff
            out.diff_low.loc[variant, m] = math.nan if d.low is None else d.low
            out.diff_high.loc[variant, m] = math.nan if d.high is None else d.high
            out.separable.loc[variant, m] = d.separable
        out.diff_seeds[variant] = len(common)
        out.sentences[variant] = len(ref_runs[common[0]].counts)
    return out


def _same_sentences(pairs: list[tuple[RunSentences, RunSentences]]) -> bool:
    """Each (variant, reference) pair of one seed evaluated the same sentences (index, exists, sentence ids
    where the files have them) at the same threshold and resolution, and every run has as many sentences
    (the bootstrap draws the same sentence indices for every seed)."""
    sizes = set()
    for mine, ref in pairs:
        a, b = mine.counts, ref.counts
        assert a is not None and b is not None
        sizes |= {len(a), len(b)}
        if mine.setting != ref.setting or len(a) != len(b):
            return False
        if not (np.array_equal(a.index, b.index) and np.array_equal(a.exists, b.exists)):
            return False
        if mine.ids and ref.ids and mine.ids != ref.ids:
            return False
        if mine.groups is not None and ref.groups is not None and not np.array_equal(mine.groups, ref.groups):
            return False
    return len(sizes) == 1
