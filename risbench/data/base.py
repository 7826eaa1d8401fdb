"""What every referring dataset shares: refs with several sentences; training yields one sentence per ref
(chosen per epoch, deterministic from seed and epoch), evaluation yields every sentence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from risbench.data.transforms import ResizeNormalize
from risbench.errors import RisbenchError


@dataclass(frozen=True)
class Sentence:
    sent_id: int
    text: str
    exists: bool = True  # False: a negative sentence (R-RefCOCO / SynthRef robust): empty target


@dataclass
class LoadedRef:
    """One ref, materialised: the image, its referent's mask at the original size, and its sentences."""

    image: np.ndarray  # uint8 (H0, W0, 3)
    mask: np.ndarray  # uint8 (H0, W0) in {0, 1}
    ref_id: int
    image_id: int
    sentences: list[Sentence]


_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): cheap per-item randomness without a Generator."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 29
    return x


class RefDataset(torch.utils.data.Dataset):
    """Base class. Subclasses implement `num_refs()`, `sentence_counts()` and `load_ref(index)`.

    Training (`train=True`): one item per ref; the sentence is chosen by a hash of (seed, epoch, index),
    so `set_epoch(e)` changes the choice and a rerun reproduces it. Evaluation: one item per sentence, refs
    in order and each ref's sentences in order.

    Note: with a DataLoader, call `set_epoch` before creating the epoch's iterator (workers copy the dataset
    when the iterator starts; with persistent_workers the copy would keep the old epoch).
    """

    def __init__(self, *, image_size: int, mean, std, train: bool, seed: int = 0, resize: str = "stretch") -> None:
        self.transform = ResizeNormalize(image_size, mean, std, resize)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self._offsets: np.ndarray | None = None
        self.kind_weights: dict[str, float] = {}

    # -- to implement -------------------------------------------------------------------------------------
    def num_refs(self) -> int:
        raise NotImplementedError

    def sentence_counts(self) -> np.ndarray:
        """Number of sentences of each ref, in ref order (int array of length num_refs())."""
        raise NotImplementedError

    def load_ref(self, index: int) -> LoadedRef:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _eval_offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = np.concatenate([[0], np.cumsum(self.sentence_counts(), dtype=np.int64)])
        return self._offsets

    def __len__(self) -> int:
        return self.num_refs() if self.train else int(self._eval_offsets()[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(ref index, sentence index) of item `index` in the current mode and epoch."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.train:
            n = int(self.sentence_counts()[index])
            return index, mix_seed(self.seed, self.epoch, index) % n
        offsets = self._eval_offsets()
        ref = int(np.searchsorted(offsets, index, side="right") - 1)
        return ref, index - int(offsets[ref])

    def set_kind_weights(self, weights: dict[str, float]) -> None:
        """Training: draw each ref's sentence with these weights by kind (`train.kind_weights`; 1 for a kind
        not named) instead of uniformly. Refused for a dataset that names no kinds."""
        if weights and type(self).sentence_kind is RefDataset.sentence_kind:
            raise RisbenchError(
                f"train.kind_weights: {type(self).__name__} does not name the kinds of its sentences; remove it"
            )
        self.kind_weights = dict(weights)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref_index, sent_index = self.locate(index)
        ref = self.load_ref(ref_index)
        if self.train and self.kind_weights:
            sent_index = self._weighted_sentence(ref, index)
        sent = ref.sentences[sent_index]
        orig_mask = ref.mask if sent.exists else np.zeros_like(ref.mask)
        image, mask, resize = self.transform(ref.image, orig_mask)
        return {
            "image": image,
            "text": sent.text,
            "mask": mask,
            "exists": sent.exists,
            "meta": {
                "orig_mask": orig_mask,
                "orig_size": tuple(orig_mask.shape),
                "resize": resize,
                "ref_id": ref.ref_id,
                "sent_id": sent.sent_id,
                "image_id": ref.image_id,
                "sentence": sent.text,
                "exists": sent.exists,
                "kind": self.sentence_kind(sent.text),
            },
        }

    def _weighted_sentence(self, ref: LoadedRef, index: int) -> int:
        weights = np.array([self.kind_weights.get(self.sentence_kind(s.text), 1.0) for s in ref.sentences], float)
        if not weights.sum() > 0:
            weights = np.ones(len(weights))
        u = mix_seed(self.seed, self.epoch, index, 1) / 2.0**64  # same draw on every rerun
        return int(min(np.searchsorted(np.cumsum(weights) / weights.sum(), u, side="right"), len(weights) - 1))

    def sentence_kind(self, text: str) -> str:
        """The kind of a sentence, for per-kind metrics (`by_kind`, table columns like `p50@shape`); ""
        (the default) when the dataset does not classify its sentences."""
        return ""
