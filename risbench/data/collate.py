"""Batching: stack images and masks, tokenise the expressions, keep the per-sample meta as a list."""

from __future__ import annotations

from typing import Any

import torch


class Collator:
    """list of samples -> {"image" (B,3,S,S), "text_ids" (B,L), "text_pad_mask" (B,L) True on pad,
    "mask" (B,S,S), "exists" (B,) bool, "meta": list of meta dicts}."""

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_len = int(max_len)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        ids, pad_mask = self.tokenizer.encode([s["text"] for s in samples], self.max_len)
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "text_ids": ids,
            "text_pad_mask": pad_mask,
            "mask": torch.stack([s["mask"] for s in samples]),
            "exists": torch.tensor([bool(s["exists"]) for s in samples], dtype=torch.bool),
            "meta": [s["meta"] for s in samples],
        }
