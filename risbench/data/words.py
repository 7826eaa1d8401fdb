"""Word classes of a dataset (colours, shapes, sizes for SynthRef) as token ids of a tokenizer: what
`risbench pretrain-probe` masks one class at a time and what image-text matching swaps for its negatives."""

from __future__ import annotations


def class_ids(tokenizer, classes: dict[str, dict[str, list[str]]]) -> tuple[dict[str, dict[int, int]], dict]:
    """Per class, {token id of a word: index of its meaning}; words the tokenizer splits into several
    pieces are left out (and returned per class, so that the report says so)."""
    specials = (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    ids: dict[str, dict[int, int]] = {}
    split: dict[str, list[str]] = {}
    for kind, meanings in classes.items():
        ids[kind], split[kind] = {}, []
        for m, words in enumerate(meanings.values()):
            for w in words:
                pieces = [int(t) for t in tokenizer.encode([w], 11)[0][0] if int(t) not in specials]
                if len(pieces) == 1:
                    ids[kind][pieces[0]] = m
                else:
                    split[kind].append(w)
    return ids, split
