"""Evaluation: run a model over every sentence of a split, score each at the evaluation resolution,
gather the counts from all ranks, and reduce them to metrics (risbench.train.metrics).

Resolution `original` (default): the sigmoid map at the logits' resolution is mapped back to the
original image size (`unmap_prediction`, bilinear) and thresholded there, against the original mask.
Resolution `input` (LAVT-style): the map is upsampled bilinearly to the S x S input and compared with
the ground truth resized nearest to S x S (`input_resolution_mask`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from risbench.train.distributed import DistInfo, all_gather_objects
from risbench.train.metrics import SentenceResult, compute_metrics, score_sentence
from risbench.train.precision import autocast_context


class SwappedText(torch.utils.data.Dataset):
    """A dataset whose every expression is replaced by another sample's (a seeded derangement): the
    target stays, the text no longer describes it. A model that uses the text should collapse."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        n = len(dataset)
        g = torch.Generator()
        g.manual_seed(seed + 7919)
        perm = torch.randperm(n, generator=g).tolist() if n > 1 else list(range(n))
        for i in range(n):  # no sample keeps its own text
            if perm[i] == i and n > 1:
                j = (i + 1) % n
                perm[i], perm[j] = perm[j], perm[i]
        self.perm = perm

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        other = self.dataset[self.perm[index]]
        sample["text"] = other["text"]
        sample["meta"] = {
            **sample["meta"],
            "sentence": other["text"],
            "kind": other["meta"].get("kind", ""),
            "swapped_from": self.perm[index],
        }
        return sample


def score_batch(
    logits: torch.Tensor, batch: dict[str, Any], indices: list[int], *, threshold: float, resolution: str
) -> list[SentenceResult]:
    """Per-sentence counts for one batch of logits (B, 1, h, w)."""
    from risbench.data.transforms import input_resolution_mask, unmap_prediction

    prob = torch.sigmoid(logits.float())[:, 0].cpu()
    size = tuple(batch["image"].shape[-2:])
    out = []
    for i, meta in enumerate(batch["meta"]):
        if resolution == "original":
            p = unmap_prediction(prob[i], meta)
            gt = np.asarray(meta["orig_mask"]) > 0
        else:
            p = prob[i]
            if tuple(p.shape) != size:
                p = F.interpolate(p[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            gt = np.asarray(input_resolution_mask(meta, size)) > 0
        pred = (p > threshold).numpy()
        out.append(
            score_sentence(
                pred,
                gt,
                index=indices[i],
                ref_id=meta.get("ref_id"),
                exists=bool(batch["exists"][i].item()),
                sentence=meta.get("sentence", ""),
                sent_id=meta.get("sent_id"),
                kind=meta.get("kind", ""),
            )
        )
    return out


@torch.no_grad()
def evaluate_dataset(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    collator: Any,
    info: DistInfo,
    *,
    threshold: float = 0.35,
    resolution: str = "original",
    batch_size: int = 32,
    amp: str = "auto",
    max_samples: int | None = None,
    num_workers: int = 0,
) -> tuple[dict[str, Any], list[SentenceResult]]:
    """Metrics of `model` (unwrapped, not DDP) on `dataset`; each rank scores every world_size-th
    sentence and the counts are gathered, so every rank returns the same metrics."""
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    mine = list(range(info.rank, n, info.world_size))
    per_rank = max(1, batch_size // info.world_size)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, mine),
        batch_size=per_rank,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collator,
        generator=torch.Generator(),  # do not draw the loader's base seed from the global RNG
    )
    was_training = model.training
    model.eval()
    results: list[SentenceResult] = []
    pos = 0
    try:
        for batch in loader:
            b = batch["image"].shape[0]
            with autocast_context(info.device, amp):
                out = model(
                    batch["image"].to(info.device, non_blocking=True),
                    batch["text_ids"].to(info.device),
                    batch["text_pad_mask"].to(info.device),
                )
            results += score_batch(out.logits, batch, mine[pos : pos + b], threshold=threshold, resolution=resolution)
            pos += b
    finally:
        model.train(was_training)
    gathered = [r for part in all_gather_objects(results, info) for r in part]
    gathered.sort(key=lambda r: r.index)
    return compute_metrics(gathered), gathered


def per_sentence_csv(results: list[SentenceResult]) -> str:
    """One CSV row per evaluated sentence (for error analysis): IoU, areas in percent of the image at the
    evaluation resolution, whether the expression refers to something, and the expression itself."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "index": [r.index for r in results],
            "ref_id": [r.ref_id for r in results],
            "exists": [r.exists for r in results],
            "iou": [round(r.iou * 100, 4) for r in results],
            "gt_area_pct": [round(100 * r.gt_area / max(r.image_area, 1), 4) for r in results],
            "pred_area_pct": [round(100 * r.pred_area / max(r.image_area, 1), 4) for r in results],
            "sentence": [r.sentence for r in results],
        }
    )
    return frame.to_csv(index=False)
