"""SynthRef, the built-in benchmark: procedurally drawn scenes with referring expressions, generated on the fly.

Scene (split, i) is drawn from numpy's Generator seeded with (seed, split, i), so every split is a disjoint,
reproducible stream. Each scene has `refs_per_scene` refs of `sentences_per_ref` sentences; `num_train`,
`num_val`, `num_test` count scenes (images). Ids: image_id = split * 10^8 + i, ref_id = image_id *
refs_per_scene + r, sent_id = ref_id * sentences_per_ref + j (unique across splits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from risbench.data.base import LoadedRef, RefDataset, Sentence
from risbench.data.synthref_analysis import word_kinds
from risbench.data.synthref_generate import caption, make_scene, object_caption
from risbench.data.synthref_render import render
from risbench.data.synthref_scene import COLOURS, FLAVOURS, SHAPES, SIZE_WORDS, Scene
from risbench.errors import RisbenchError, unknown_name_message
from risbench.registry import DATASETS

SPLITS = ("train", "val", "test")
TEXT_MODES = ("expressions", "captions", "objects", "both")
IMAGE_ID_STRIDE = 10**8
TOKENIZER_SCENES = 2000  # training scenes whose sentences train a tokenizer (see train_texts)


@dataclass
class SynthRefConfig:
    flavour: str = "refcoco"  # refcoco (position words) | refcoco+ (appearance only) | refcocog (relations)
    image_size: int = 128  # rendered image side (the "original" size; the model input may differ)
    num_train: int = 20000  # scenes per split
    num_val: int = 1000
    num_test: int = 1000
    seed: int = 0
    negative_fraction: float = 0.0  # robust setting: each sentence after a ref's first is negative w.p. this
    refs_per_scene: int = 2
    sentences_per_ref: int = 3
    min_objects: int = 3
    max_objects: int = 5
    object_scale: float = 1.0  # multiplies every object's radius (small 0.075, large 0.135 of the side at 1.0)
    # expressions (refs with referring expressions) | captions (one ref a scene: a caption naming every object,
    # the mask all objects; for pretraining) | objects (one ref a scene: one object named in full, "a small red
    # circle", the mask that object; for pretraining) | both (the refs, then the scene-caption ref)
    text: str = "expressions"

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ValueError(unknown_name_message("SynthRef flavour", self.flavour, FLAVOURS))
        if not 0.0 <= self.negative_fraction < 1.0:
            raise ValueError(f"negative_fraction must be in [0, 1), got {self.negative_fraction}")
        if not 1 <= self.refs_per_scene <= self.min_objects <= self.max_objects <= 8:
            raise ValueError("need 1 <= refs_per_scene <= min_objects <= max_objects <= 8")
        if not 0.0 < self.object_scale <= 2.0:
            raise ValueError(f"object_scale must be in (0, 2], got {self.object_scale}")
        if self.text not in TEXT_MODES:
            raise ValueError(unknown_name_message("SynthRef text", self.text, TEXT_MODES))
        if self.sentences_per_ref < 1 or self.image_size < 16:
            raise ValueError("need sentences_per_ref >= 1 and image_size >= 16")


def split_size(cfg: SynthRefConfig, split: str) -> int:
    if split not in SPLITS:
        raise RisbenchError(unknown_name_message("SynthRef split", split, SPLITS))
    return {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}[split]


class SceneSource:
    """Scenes of one split, by index, without pixels (cached: refs of a scene are usually read together)."""

    def __init__(self, cfg: SynthRefConfig, split: str) -> None:
        self.cfg = cfg
        self.split = split
        self.size = split_size(cfg, split)  # checks the split name
        self.split_code = SPLITS.index(split)
        self._cache: dict[int, Scene] = {}

    def scene(self, index: int) -> Scene:
        if index in self._cache:
            return self._cache[index]
        if not 0 <= index < self.size:
            raise IndexError(index)
        if len(self._cache) >= 64:
            self._cache.pop(next(iter(self._cache)))
        c = self.cfg
        rng = np.random.default_rng([c.seed, self.split_code, index])
        scene = self._cache[index] = make_scene(
            rng,
            c.flavour,
            min_objects=c.min_objects,
            max_objects=c.max_objects,
            refs_per_scene=c.refs_per_scene,
            sentences_per_ref=c.sentences_per_ref,
            negative_fraction=c.negative_fraction,
            object_scale=c.object_scale,
        )
        return scene

    def image_id(self, index: int) -> int:
        return self.split_code * IMAGE_ID_STRIDE + index

    @property
    def expression_refs(self) -> int:
        """Refs with referring expressions a scene yields (none with text: captions)."""
        return 0 if self.cfg.text in ("captions", "objects") else self.cfg.refs_per_scene

    @property
    def slots(self) -> int:
        """Refs a scene yields: its expression refs, then its caption ref (text: captions, objects or both)."""
        return self.expression_refs + (self.cfg.text != "expressions")

    def caption(self, index: int) -> tuple[str, int | None]:
        """The caption ref of scene `index` (text, the object it names or None for all), from its own
        generator (the scene's draws are not disturbed)."""
        rng = np.random.default_rng([self.cfg.seed, self.split_code, index, 1])
        objects = self.scene(index).objects
        if self.cfg.text == "objects":
            return object_caption(objects, rng)
        return caption(objects, rng), None

    def ref_id(self, index: int, r: int) -> int:
        return self.image_id(index) * self.slots + r

    def sent_id(self, ref_id: int, j: int) -> int:
        return ref_id * self.cfg.sentences_per_ref + j


@DATASETS.register("synthref", config=SynthRefConfig)
class SynthRefDataset(RefDataset):
    """SynthRef: procedural shapes on textured backgrounds with referring expressions (built in, no download)."""

    def __init__(
        self,
        cfg: SynthRefConfig,
        split: str,
        *,
        image_size: int,
        mean,
        std,
        train: bool,
        seed: int = 0,
        resize: str = "stretch",
    ):
        super().__init__(image_size=image_size, mean=mean, std=std, train=train, seed=seed, resize=resize)
        self.cfg = cfg
        self.source = SceneSource(cfg, split)
        self.split = split
        captions = self.source.slots - self.source.expression_refs
        counts = [cfg.sentences_per_ref] * self.source.expression_refs + [1] * captions
        self._counts = np.tile(np.array(counts, dtype=np.int64), self.source.size)
        self._rendered: tuple[int, np.ndarray, np.ndarray] | None = None

    @classmethod
    def split_names(cls, cfg: SynthRefConfig) -> list[str]:
        return list(SPLITS)

    @classmethod
    def train_texts(cls, cfg: SynthRefConfig) -> list[str]:
        """The sentences of the first TOKENIZER_SCENES training scenes: SynthRef's vocabulary is closed and
        these cover it (tests/test_tokenizers.py checks), at a fraction of the cost of all scenes."""
        source = SceneSource(cfg, "train")
        n = min(source.size, TOKENIZER_SCENES)
        texts = [text for i in range(n) for ref in source.scene(i).refs for text, _ in ref.sentences]
        if cfg.text != "expressions":  # captions too; the expressions stay, so fine-tuning words are covered
            texts += [source.caption(i)[0] for i in range(n)]
        return texts

    @staticmethod
    def word_classes() -> dict[str, dict[str, list[str]]]:
        """SynthRef's attribute words by class, each as {meaning: its words} (`risbench pretrain-probe`)."""
        return {
            "colour": {c: [c] for c in COLOURS},
            "shape": {s: [s] for s in SHAPES},
            "size": {size: list(words) for size, words in SIZE_WORDS.items()},
        }

    def sentence_kind(self, text: str) -> str:
        """The kinds of words it uses, e.g. 'shape', 'colour+shape' (risbench.data.synthref_analysis)."""
        return word_kinds(text)

    def num_refs(self) -> int:
        return len(self._counts)

    def sentence_counts(self) -> np.ndarray:
        return self._counts

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image, labels) of scene `index` (the last one is kept: eval reads a scene's sentences in a row)."""
        if self._rendered is None or self._rendered[0] != index:
            self._rendered = (index, *render(self.source.scene(index), self.cfg.image_size))
        return self._rendered[1], self._rendered[2]

    def load_ref(self, index: int) -> LoadedRef:
        scene_index, r = divmod(index, self.source.slots)
        scene = self.source.scene(scene_index)
        image, labels = self.render(scene_index)
        ref_id = self.source.ref_id(scene_index, r)
        if r == self.source.expression_refs:  # the caption ref
            text, target = self.source.caption(scene_index)
            sentence = Sentence(self.source.sent_id(ref_id, 0), text, True)
            return LoadedRef(
                image=image,
                mask=(labels > 0 if target is None else labels == target + 1).astype(np.uint8),
                ref_id=ref_id,
                image_id=self.source.image_id(scene_index),
                sentences=[sentence],
            )
        ref = scene.refs[r]
        return LoadedRef(
            image=image,
            mask=(labels == ref.object_index + 1).astype(np.uint8),
            ref_id=ref_id,
            image_id=self.source.image_id(scene_index),
            sentences=[
                Sentence(self.source.sent_id(ref_id, j), text, exists) for j, (text, exists) in enumerate(ref.sentences)
            ],
        )


def stats(cfg: SynthRefConfig, limit: int | None = None) -> dict[str, dict]:
    """Per split: scenes, refs, sentences (negatives), vocabulary, sentence lengths, objects per scene.
    With `limit`, the figures after `scenes` are measured on the first `limit` scenes of each split."""
    out = {}
    for split in SPLITS:
        source = SceneSource(cfg, split)
        n = source.size if not limit else min(limit, source.size)
        lengths, objects, negatives, vocab = [], [], 0, set()
        for i in range(n):
            scene = source.scene(i)
            objects.append(len(scene.objects))
            for ref in scene.refs:
                for text, exists in ref.sentences:
                    words = text.split()
                    lengths.append(len(words))
                    vocab.update(words)
                    negatives += not exists
        out[split] = {
            "scenes": source.size,
            "refs": source.size * cfg.refs_per_scene,
            "sentences": source.size * cfg.refs_per_scene * cfg.sentences_per_ref,
            "measured_scenes": n,
            "negatives": negatives,
            "vocabulary": sorted(vocab),
            "length_mean": float(np.mean(lengths)) if lengths else 0.0,
            "length_max": int(max(lengths, default=0)),
            "objects": {k: objects.count(k) for k in sorted(set(objects))},
        }
    return out
