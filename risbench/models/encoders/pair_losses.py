"""Image-text pair terms shared by pretraining objectives: contrast with several positives, and matching
negatives made by swapping one word of a class for a word of another meaning (NegCLIP's caption
perturbations, Yuksekgonul et al. 2023, with the data's word classes instead of a parser)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def multi_positive_info_nce(image: Tensor, text: Tensor, scale: Tensor, same: Tensor) -> tuple[Tensor, Tensor]:
    """CLIP's symmetric InfoNCE for (B, E) image and text vectors (L2-normalised here), where `same` (B, B)
    bool marks the pairs that count as matching (the diagonal and identical captions): each row's target
    spreads evenly over its matches. Returns (loss, the (B, B) logits image -> text)."""
    logits = scale * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()
    target = same.float() / same.sum(dim=1, keepdim=True)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t())) / 2
    return loss, logits


def swap_class_words(ids: Tensor, word_ids: Tensor, meanings: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """In each row of `ids` (B, L) marked in `rows` (B,) that holds a word of the class (`word_ids` (C,) with
    their `meanings` (C,)), one such word, drawn uniformly, becomes a word of the class with another meaning,
    drawn uniformly. Returns (the new ids, (B,) bool: the rows changed). Uses torch's global RNG."""
    hit = ids.unsqueeze(-1) == word_ids  # (B, L, C)
    present = hit.any(-1)
    changed = rows & present.any(-1)
    pos = torch.rand(ids.shape, device=ids.device).masked_fill(~present, -1.0).argmax(-1)  # (B,)
    old = meanings[hit[torch.arange(ids.shape[0]), pos].float().argmax(-1)]  # (B,)
    pick = torch.rand(ids.shape[0], word_ids.numel(), device=ids.device)
    pick = pick.masked_fill(meanings.unsqueeze(0) == old.unsqueeze(1), -1.0)
    new_word = word_ids[pick.argmax(-1)]
    out = ids.clone()
    idx = changed.nonzero().squeeze(-1)
    out[idx, pos[idx]] = new_word[idx]
    return out, changed
