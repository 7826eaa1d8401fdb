"""Error analysis on SynthRef: per-sentence IoU (`risbench eval --per-sentence`) grouped by the kinds of
words an expression uses (colour, shape, size, position, relation), read with SynthRef's own vocabulary.

A model that grounds colour but not shape, say, shows it here at once: its colour-only expressions are
right and its shape-only ones at the level of picking one of the scene's objects at random.
"""

from __future__ import annotations

import pandas as pd

from risbench.data.synthref_scene import COLOURS, POSITION_WORDS, RELATIONS, SHAPES, SIZE_WORDS

SIZE_VOCAB = frozenset(w for words in SIZE_WORDS.values() for w in words)
RELATION_PHRASES = tuple(p for _, _, phrases in RELATIONS.values() for p in phrases)


def word_kinds(sentence: str) -> str:
    """'colour+shape', 'size+shape', 'colour+relation', ... ('none' for a generic 'the one')."""
    words = sentence.lower().split()
    kinds = []
    if any(w in SIZE_VOCAB for w in words):
        kinds.append("size")
    if any(w in COLOURS for w in words):
        kinds.append("colour")
    if any(w in SHAPES for w in words):
        kinds.append("shape")
    padded = f" {' '.join(words)} "
    if any(f" {p} " in padded for p in RELATION_PHRASES):
        kinds.append("relation")
    elif any(w in POSITION_WORDS for w in words):
        kinds.append("position")
    return "+".join(kinds) or "none"


def breakdown(per_sentence: pd.DataFrame, threshold: float = 50.0) -> pd.DataFrame:
    """Per word-kind group of positive sentences: count, mean IoU and P@threshold (percent), largest first."""
    frame = per_sentence[per_sentence["exists"]].copy()
    frame["words"] = frame["sentence"].map(word_kinds)
    frame["hit"] = frame["iou"] >= threshold
    table = frame.groupby("words").agg(sentences=("iou", "size"), mIoU=("iou", "mean"), hit=("hit", "mean"))
    table["hit"] *= 100
    table = table.rename(columns={"hit": f"P@{threshold / 100:g}"}).round(2)
    return table.sort_values("sentences", ascending=False)
