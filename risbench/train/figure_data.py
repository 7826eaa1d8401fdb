"""What `risbench figure` draws, computed from trained runs: sentences of a split with their image and
ground truth, each run's prediction and IoU on them, and the text-to-patch attention maps a run's
components keep (risbench.models.interfaces.AttentionMaps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from risbench.errors import RisbenchError
from risbench.train.components import build_split
from risbench.train.distributed import DistInfo
from risbench.train.metrics import score_sentence
from risbench.train.predict import segment
from risbench.train.reeval import load_run


@dataclass
class Sample:
    """One evaluated sentence: its position in the split, the image, the ground truth, the expression."""

    index: int
    rgb: np.ndarray
    gt: np.ndarray
    expression: str
    exists: bool


def load_samples(comp, cfg, split: str, indices: list[int]) -> list[Sample]:
    """The sentences at `indices` of `split`, as the run's evaluation sees them (same order and seed)."""
    ds = build_split(comp, split, train=False, seed=cfg.seed)
    out = []
    for i in indices:
        if not 0 <= i < len(ds):
            raise RisbenchError(f"sentence index {i} is outside {split} (0..{len(ds) - 1})")
        ref_i, sent_i = ds.locate(i)
        ref = ds.load_ref(ref_i)
        sent = ref.sentences[sent_i]
        gt = ref.mask if sent.exists else np.zeros_like(ref.mask)
        out.append(Sample(i, np.asarray(ref.image), np.asarray(gt) > 0, sent.text, bool(sent.exists)))
    return out


def predictions(
    run_dirs: list[Path], split: str, indices: list[int], checkpoint: str = "auto"
) -> tuple[list[Sample], list[list[np.ndarray]], list[list[float]]]:
    """The sentences (read with the first run's data config), and per run its masks and IoU (percent) on
    them, thresholded as the run evaluates. All runs must use the same data."""
    samples: list[Sample] = []
    masks, ious, data = [], [], None
    for run_dir in run_dirs:
        cfg, resolved, comp, _ = load_run(run_dir, checkpoint, DistInfo())
        if data is None:
            data = resolved.get("data")
            samples = load_samples(comp, cfg, split, indices)
        elif resolved.get("data") != data:
            raise RisbenchError(f"{run_dir}: other data than {run_dirs[0]}; compare runs of one dataset")
        mine, scores = [], []
        for s in samples:
            prob, _ = segment(comp, cfg, s.rgb, s.expression)
            pred = prob > cfg.eval.threshold
            mine.append(pred)
            r = score_sentence(pred, s.gt, index=s.index, ref_id=None, exists=s.exists)
            scores.append(100 * r.iou)
        masks.append(mine)
        ious.append(scores)
    return samples, masks, ious


@dataclass
class Attention:
    """One sentence's attention maps: the token texts, {name: (L, h, w)} per kept layer, the prediction."""

    sample: Sample
    tokens: list[str]
    maps: dict[str, np.ndarray]
    mask: np.ndarray


@torch.no_grad()
def attention(run_dir: Path, split: str, index: int, checkpoint: str = "auto") -> Attention:
    """Run one sentence with every component keeping its attention maps (none keep any: an error that
    says which components do)."""
    cfg, _, comp, _ = load_run(run_dir, checkpoint, DistInfo())
    sample = load_samples(comp, cfg, split, [index])[0]
    parts = [comp.model.encoder, comp.model.fpn, comp.model.decoder]
    for part in parts:
        part.keep_attention(True)
    try:
        prob, _ = segment(comp, cfg, sample.rgb, sample.expression)
        maps = {name: m[0].numpy() for part in parts for name, m in part.attention_maps().items()}
    finally:
        for part in parts:
            part.keep_attention(False)
    if not maps:
        names = ", ".join(type(p).__name__ for p in parts)
        raise RisbenchError(
            f"{run_dir}: none of {names} keeps text-to-patch attention; the BEiT-3 encoder and the shared FPN do"
        )
    tokens = comp.tokenizer.token_strings(sample.expression, cfg.tokenizer.max_len)
    return Attention(sample, tokens, {k: v[: len(tokens)] for k, v in maps.items()}, prob > cfg.eval.threshold)
