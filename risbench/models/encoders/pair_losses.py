"""Image-text pair terms shared by pretraining objectives: CLIP's contrast (one positive or several), and matching
negatives made by swapping one word of a class for a word of another meaning (NegCLIP's caption
perturbations, Yuksekgonul et al. 2023, with the data's word classes instead of a parser)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_logits(image: Tensor, text: Tensor, scale: Tensor) -> Tensor:
    """(B, B) logits image -> text: `scale` times the cosine similarities of (B, E) image and text vectors."""
    return scale * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()


def symmetric_info_nce(image: Tensor, text: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """CLIP's loss for (B, E) image and text vectors, row i of each a pair: (loss, the (B, B) logits
    image -> text). The vectors are L2-normalised here; `scale` multiplies the cosine similarities."""
    logits = cosine_logits(image, text, scale)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2, logits


def multi_positive_info_nce(
    image: Tensor, text: Tensor, scale: Tensor, same: Tensor, negatives: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """CLIP's symmetric InfoNCE where `same` (B, B) bool marks the pairs that count as matching (the diagonal
    and identical captions): each row's target spreads evenly over its matches. `negatives` (N, E), text
    vectors that match no image (NegCLIP's hard negatives), become N more columns of the image -> text side
    only. Returns (loss, the (B, B + N) image -> text logits)."""
    columns = text if negatives is None else torch.cat([text, negatives])
    logits = cosine_logits(image, columns, scale)
    target = same.float() / same.sum(dim=1, keepdim=True)
    i2t = F.cross_entropy(logits, F.pad(target, (0, logits.shape[1] - target.shape[1])))
    t2i = F.cross_entropy(logits[:, : same.shape[1]].t(), target.t())
    return (i2t + t2i) / 2, logits


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


def bag_of_words_loss(logits: Tensor, ids: Tensor, words: Tensor) -> Tensor:
    """SuperClass's classification loss (without IDF weights): (B, V) logits from the image alone against each
    caption's word ids (`ids` (B, L) where `words` (B, L) is true), as a target spread evenly over the distinct
    ids of the caption; softmax cross-entropy, the mean over the batch."""
    vocab = logits.shape[1]
    hot = torch.zeros(logits.shape[0], vocab + 1, device=logits.device)  # column `vocab` takes the non-words
    hot.scatter_(1, ids.masked_fill(~words, vocab), 1.0)
    hot = hot[:, :vocab]
    return F.cross_entropy(logits.float(), hot / hot.sum(1, keepdim=True).clamp(min=1.0))
