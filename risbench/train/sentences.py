"""The per-sentence file of a run: `per_sentence.<split>.csv.gz` in the run directory.

One row per evaluated sentence of the run's final evaluation, in dataset order, columns::

    index,sent_id,ref_id,exists,inter,union,iou,threshold,resolution,kind

`index` is the sentence's position in the evaluated split, `sent_id` / `ref_id` the dataset's ids,
`exists` 1 for a sentence that refers to something (0: a negative), `inter` / `union` the pixel counts at the
evaluation resolution (integers, so every metric can be recomputed exactly), `iou` = inter / union in
percent rounded to 4 decimals (for reading; recomputations use the counts), `threshold` / `resolution`
what the counts were computed at (the same on every row), `kind` the sentence's kind as its dataset
classifies it (SynthRef: the kinds of words it uses, e.g. `shape`; empty for other datasets, absent in
files written before it). gzip with mtime 0, so equal results give
equal bytes. Reading needs pandas only (no torch), so that `risbench table` stays light.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pandas as pd

from risbench.train.metrics import SentenceResult

COLUMNS = ("index", "sent_id", "ref_id", "exists", "inter", "union", "iou", "threshold", "resolution", "kind")


def per_sentence_path(run_dir: str | Path, split: str) -> Path:
    """Where a run keeps the per-sentence results of `split`."""
    return Path(run_dir) / f"per_sentence.{split}.csv.gz"


def sentence_frame(results: list[SentenceResult], threshold: float, resolution: str) -> pd.DataFrame:
    """The rows of the per-sentence file for `results` (sorted by index)."""
    results = sorted(results, key=lambda r: r.index)
    return pd.DataFrame(
        {
            "index": [r.index for r in results],
            "sent_id": [r.sent_id for r in results],
            "ref_id": [r.ref_id for r in results],
            "exists": [int(r.exists) for r in results],
            "inter": [r.inter for r in results],
            "union": [r.union for r in results],
            "iou": [round(100 * r.iou, 4) for r in results],
            "threshold": threshold,
            "resolution": resolution,
            "kind": [r.kind for r in results],
        },
        columns=list(COLUMNS),
    )


def encode(frame: pd.DataFrame) -> bytes:
    """gzip'ed CSV bytes of a per-sentence frame (mtime 0: reproducible)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(frame.to_csv(index=False, lineterminator="\n").encode())
    return buf.getvalue()


def write_per_sentence(
    run_dir: str | Path, split: str, results: list[SentenceResult], threshold: float, resolution: str
) -> Path:
    """Write run_dir/per_sentence.<split>.csv.gz atomically; returns its path."""
    from risbench.train.checkpoint import atomic_write_bytes

    path = per_sentence_path(run_dir, split)
    data = encode(sentence_frame(results, threshold, resolution))
    atomic_write_bytes(path, lambda f: f.write(data))
    return path


def read_per_sentence(path: str | Path) -> pd.DataFrame | None:
    """The frame of a per-sentence file, or None when it is missing or unreadable (or lacks a column)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, compression="gzip")
    except (OSError, ValueError, EOFError, pd.errors.ParserError):
        return None
    if not {"index", "exists", "inter", "union"} <= set(frame.columns):
        return None
    if "kind" in frame:
        frame["kind"] = frame["kind"].fillna("").astype(str)
    return frame
