"""`risbench pretrain-probe ARTIFACT`: which kinds of words a pretrained encoder reads from the pixels.

The held-out check in pretrain.json gives one masked-word accuracy over whole captions, where a word can
often be filled in by elimination. The probe asks one question per word class instead: on held-out object
captions of the artifact's own data ("a small red circle": one object of the scene, named in full), every
word of one class (the colour, the shape, the size) is masked and predicted, with the argmax restricted to
that class's words; a guess counts when it means what the target means ("tiny" for "small"), so chance
is 1 / (number of meanings in the class). It does so with each caption's own
image and with the next caption's image: a class the encoder reads from the pixels is above chance with
its own image and near chance with a swapped one. A class at chance with its own image is one the
encoder has not learned to see (docs/decisions.md §9).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from risbench.data.words import class_ids
from risbench.errors import IncompatibleError, RisbenchError
from risbench.io import provenance
from risbench.train.pretrain import _split, build_objective, read_artifact, tokenizer_cache
from risbench.train.pretrain_config import resolve_pretrain_config

PROBE_TEXT = "objects"  # the data's text mode with one object named in full per scene


def class_accuracy(
    logits_fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor],
    batches: Iterable[dict[str, Any]],
    ids: dict[str, dict[int, int]],
    mask_id: int,
) -> dict[str, dict[str, Any]]:
    """Per class: masked positions, and the share (percent) whose restricted-argmax word has the target's
    meaning, with the own and with a swapped image. `logits_fn(image, masked_ids, pad_mask, masked)`
    gives (n_masked, vocab) logits."""
    hits = {k: {"own": 0, "swapped": 0, "masked": 0} for k in ids}
    for batch in batches:
        for kind, word_meaning in ids.items():
            if not word_meaning:
                continue
            cand = torch.tensor(list(word_meaning))
            meaning = torch.tensor(list(word_meaning.values()))
            masked = torch.isin(batch["text_ids"], cand)
            if not masked.any():
                continue
            target = meaning[(batch["text_ids"][masked][:, None] == cand[None]).float().argmax(1)]
            hits[kind]["masked"] += int(masked.sum())
            masked_ids = batch["text_ids"].masked_fill(masked, mask_id)
            for mode in ("own", "swapped"):
                image = batch["image"] if mode == "own" else batch["image"].roll(1, dims=0)
                logits = logits_fn(image, masked_ids, batch["text_pad_mask"], masked)
                guess = meaning[logits[:, cand].float().argmax(-1)]
                hits[kind][mode] += int((guess == target).sum())
    out = {}
    for kind, h in hits.items():
        n, meanings = h["masked"], len(set(ids[kind].values()))
        out[kind] = {
            "meanings": meanings,
            "chance": round(100.0 / meanings, 2) if meanings else None,
            "masked": n,
            "own_image": round(100.0 * h["own"] / n, 2) if n else None,
            "swapped_image": round(100.0 * h["swapped"] / n, 2) if n else None,
        }
    return out


def objective_from_artifact(directory: Path, weights: bool = True, encoder: dict[str, Any] | None = None):
    """(objective, tokenizer, cfg, resolved) of the artifact in `directory` (checked against its sha256s), with
    its tokenizer; `weights`: the encoder and heads as exported (the encoder loads as fine-tuning loads it),
    else random init; `encoder`: options set on the encoder's config first."""
    art = read_artifact(Path(directory))
    raw = dict(art.provenance.config)
    raw.pop("continue_from", None)  # the artifact itself is the starting point here
    raw["tokenizer"] = {**raw.get("tokenizer", {}), "path": art.tokenizer_path}
    model = dict(raw["model"])
    model["encoder"] = {**model.get("encoder", {}), **(encoder or {}), **(art.encoder_options if weights else {})}
    raw["model"] = model
    cfg, resolved = resolve_pretrain_config(raw)
    objective, tokenizer, _ = build_objective(cfg, resolved, tokenizer_cache(cfg))
    if weights:
        objective.load_export(art.directory)
    return objective, tokenizer, cfg, resolved


def probe(directory: Path, samples: int = 500, batch_size: int = 50) -> dict[str, Any]:
    """The probe of the artifact in `directory` (checked against its sha256s) on its data's val split."""
    from risbench.data.collate import Collator

    objective, tokenizer, cfg, resolved = objective_from_artifact(directory)
    if not hasattr(objective, "masked_word_logits"):
        raise IncompatibleError(
            f"incompatible components: pretrain-probe needs an objective that predicts masked words from the "
            f"image and the text; '{cfg.objective.name}' does not"
        )
    objective.eval()
    data = {**resolved["data"], "text": PROBE_TEXT}
    try:
        dataset = _split({**resolved, "data": data}, objective.encoder, "val", cfg.seed)
    except (TypeError, ValueError) as exc:
        raise RisbenchError(f"pretrain-probe: the data '{data.get('name')}' has no object captions ({exc})") from None
    classes = dataset.word_classes() if hasattr(dataset, "word_classes") else None
    if not classes:
        raise RisbenchError(f"pretrain-probe: the data '{data.get('name')}' names no word classes (SynthRef does)")
    ids, split = class_ids(tokenizer, classes)
    collate = Collator(tokenizer, cfg.tokenizer.max_len)
    n = min(samples, len(dataset))

    def batches():
        for start in range(0, n, batch_size):
            yield collate([dataset[i] for i in range(start, min(n, start + batch_size))])

    with torch.no_grad():
        result = class_accuracy(objective.masked_word_logits, batches(), ids, int(tokenizer.mask_id))
    for kind in result:
        result[kind]["left_out"] = split[kind]
    return {
        "artifact": Path(directory).name,
        "split": "val",
        "text": PROBE_TEXT,
        "samples": n,
        "classes": result,
        "provenance": provenance(torch.device("cpu"), 1, cfg.seed),
    }
