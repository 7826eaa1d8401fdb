"""Image-text pair terms shared by pretraining objectives: CLIP's contrast (one positive or several), and matching
negatives made by swapping one word of a class for a word of another meaning (NegCLIP's caption
perturbations, Yuksekgonul et al. 2023, with the data's word classes instead of a parser), and image-level word
targets: SuperClass's bag of words, multiple-instance tags, one class's tags."""

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


def word_multi_hot(ids: Tensor, words: Tensor, vocab: int) -> Tensor:
    """(B, vocab) float: 1 where the id is one of the caption's words (`ids` (B, L) where `words` (B, L))."""
    hot = torch.zeros(ids.shape[0], vocab + 1, device=ids.device)  # column `vocab` takes the non-words
    hot.scatter_(1, ids.masked_fill(~words, vocab), 1.0)
    return hot[:, :vocab]


def bag_of_words_loss(logits: Tensor, ids: Tensor, words: Tensor) -> Tensor:
    """SuperClass's classification loss (without IDF weights): (B, V) logits from the image alone against each
    caption's word ids (`ids` (B, L) where `words` (B, L) is true), as a target spread evenly over the distinct
    ids of the caption; softmax cross-entropy, the mean over the batch."""
    hot = word_multi_hot(ids, words, logits.shape[1])
    return F.cross_entropy(logits.float(), hot / hot.sum(1, keepdim=True).clamp(min=1.0))


def max_pooled_words_loss(logits: Tensor, ids: Tensor, words: Tensor) -> Tensor:
    """Multiple-instance word tagging (global max pooling, Oquab et al. 2015): (B, N, V) logits of N patches,
    max-pooled over the patches, against each caption's words as independent labels; binary cross-entropy
    summed over the vocabulary, the mean over the batch. A word is present when one patch shows it."""
    pooled = logits.float().amax(dim=1)
    hot = word_multi_hot(ids, words, pooled.shape[1])
    return F.binary_cross_entropy_with_logits(pooled, hot, reduction="sum") / pooled.shape[0]


def class_tag_loss(
    logits: Tensor, ids: Tensor, words: Tensor, word_ids: Tensor, meanings: Tensor
) -> tuple[Tensor, float]:
    """Tagging one word class from the image: (B, V) logits over the vocabulary, each of the class's meanings
    scored by the logsumexp of its words' logits (`word_ids` (C,) with their `meanings` (C,)), softmax
    cross-entropy against the meanings the caption names (`ids` (B, L) where `words` (B, L)), spread evenly.
    Captions naming no word of the class are left out. Returns (the mean loss, 0 when no caption names the
    class; the share of those captions whose top meaning is one they name)."""
    kept, index = torch.unique(meanings, return_inverse=True)  # meanings the tokenizer split away have no words
    member = F.one_hot(index, kept.numel()).T.bool()  # (M, C): the words of each meaning
    scores = logits.float()[:, word_ids].unsqueeze(1).masked_fill(~member, float("-inf")).logsumexp(-1)  # (B, M)
    named = word_multi_hot(ids, words, logits.shape[1])[:, word_ids]  # (B, C)
    target = (named @ member.T.float()).clamp(max=1.0)  # (B, M)
    rows = target.sum(1) > 0
    if not rows.any():
        return logits.sum() * 0.0, 0.0
    target, scores = target[rows], scores[rows]
    loss = F.cross_entropy(scores, target / target.sum(1, keepdim=True))
    return loss, float(target.gather(1, scores.argmax(1, keepdim=True)).mean())
