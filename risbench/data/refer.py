"""RefCOCO / RefCOCO+ / RefCOCOg (and R-RefCOCO) in the REFER layout (lichengunc/refer).

Layout (ROOT = `root`):
    ROOT/<folder>/refs(<split_by>).p    pickled list of refs (python-2 pickles are read with encoding latin1)
    ROOT/<folder>/instances.json        COCO-style images / annotations / categories
    ROOT/<image_dir>/<file_name>        images (COCO train2014), file_name from instances.json

`folder` defaults to the dataset name (refcoco, refcoco+, refcocog), or "r" + it for the R-RefCOCO releases
(rrefcoco, rrefcoco+, rrefcocog) when `robust` is set. Masks are decoded with pycocotools: polygons and
multi-polygons through frPyObjects and merge (the union of the parts), RLE with counts as a list
(uncompressed, e.g. crowd annotations) or a compressed string. Sentences use the normalised `sent` field
(`raw` when absent). With `robust`, a sentence whose `exist` is False is a negative (empty target); without
it such sentences are left out (a missing `exist` means positive).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from risbench.data.base import LoadedRef, RefDataset, Sentence
from risbench.data.images import read_rgb
from risbench.data.safe_pickle import load_plain
from risbench.errors import RisbenchError
from risbench.registry import DATASETS

# Splits each split_by is expected to have, for the RefCOCO family (lichengunc/refer README).
EXPECTED_SPLITS = {
    "unc": ("train", "val", "testA", "testB"),
    "umd": ("train", "val", "test"),
    "google": ("train", "val"),
}
KNOWN_DATASETS = ("refcoco", "refcoco+", "refcocog")
SPLIT_ORDER = ("train", "val", "test", "testA", "testB", "testC")


@dataclass
class ReferConfig:
    root: str = "data/refer"
    dataset: str = "refcoco"  # refcoco | refcoco+ | refcocog (or any folder name, e.g. an exported SynthRef)
    split_by: str = "unc"  # unc | umd | google
    robust: bool = False  # R-RefCOCO: sentences with exist=False are negatives (empty target)
    folder: str | None = None  # folder under root; default: dataset, or "r" + dataset when robust
    image_dir: str = "images/train2014"  # relative to root; default: also finds images/mscoco/images/train2014
    refs_file: str | None = None  # default: <root>/<folder>/refs(<split_by>).p
    instances_file: str | None = None  # default: <root>/<folder>/instances.json


DEFAULT_IMAGE_DIR = "images/train2014"  # risbench's layout
REFER_API_IMAGE_DIR = "images/mscoco/images/train2014"  # the REFER API's (LAVT, CGFormer, DMMI set-ups)


@dataclass
class ReferPaths:
    refs: Path
    instances: Path
    images: Path
    root: Path | None = None  # set when the image folder was looked for in both known layouts

    def layout(self) -> str:
        text = f"expected layout: {self.refs}, {self.instances}, images under {self.images}/"
        if self.root is not None and not self.images.is_dir():
            text += (
                f"; no image folder found: neither {self.root / DEFAULT_IMAGE_DIR}/ (risbench) nor "
                f"{self.root / REFER_API_IMAGE_DIR}/ (the REFER API's) exists; put COCO train2014 there "
                f"or set data.image_dir"
            )
        return text


def paths(cfg: ReferConfig) -> ReferPaths:
    """Where the refs, instances and images of `cfg` are. With the default image_dir, the REFER API's
    own layout (ROOT/images/mscoco/images/train2014/) is used when ours does not exist and it does."""
    root = Path(cfg.root)
    folder = root / (cfg.folder or (("r" if cfg.robust else "") + cfg.dataset))
    refs = Path(cfg.refs_file) if cfg.refs_file else folder / f"refs({cfg.split_by}).p"
    instances = Path(cfg.instances_file) if cfg.instances_file else folder / "instances.json"
    if cfg.image_dir != DEFAULT_IMAGE_DIR:
        return ReferPaths(refs, instances, root / cfg.image_dir)
    images = root / DEFAULT_IMAGE_DIR
    if not images.is_dir() and (root / REFER_API_IMAGE_DIR).is_dir():
        images = root / REFER_API_IMAGE_DIR
    return ReferPaths(refs, instances, images, root)


class ReferData:
    """The refs pickle and instances json of one dataset, indexed (shared by all its splits)."""

    def __init__(self, cfg: ReferConfig) -> None:
        self.cfg = cfg
        self.paths = p = paths(cfg)
        self.refs = self._load_refs(p)
        inst = self._load_instances(p)
        try:
            self.images = {img["id"]: img for img in inst["images"]}
            self.anns = {ann["id"]: ann for ann in inst["annotations"]}
            self.categories = {c["id"]: c.get("name", str(c["id"])) for c in inst.get("categories", [])}
        except (KeyError, TypeError) as exc:
            raise RisbenchError(
                f"{p.instances}: not COCO instances (need images/annotations with ids: {exc}); {p.layout()}"
            ) from None
        for ref in self.refs:
            if not isinstance(ref, dict) or not {"ref_id", "ann_id", "image_id", "split", "sentences"} <= set(ref):
                raise RisbenchError(
                    f"{p.refs}: a ref lacks ref_id/ann_id/image_id/split/sentences (got {ref!r:.100}); {p.layout()}"
                )
            if ref["ann_id"] not in self.anns or ref["image_id"] not in self.images:
                raise RisbenchError(
                    f"{p.refs}: ref {ref['ref_id']} points to ann {ref['ann_id']} / image {ref['image_id']}, "
                    f"not in {p.instances}"
                )

    @staticmethod
    def _load_refs(p: ReferPaths) -> list[dict[str, Any]]:
        if not p.refs.is_file():
            raise RisbenchError(f"{p.refs}: refs file not found; {p.layout()}")
        try:  # python-2 pickles of the original release: latin1; plain data only (safe_pickle)
            refs = load_plain(p.refs.read_bytes(), encoding="latin1")
        except pickle.UnpicklingError as exc:
            raise RisbenchError(f"{p.refs}: not a plain-data refs pickle: {exc}; {p.layout()}") from None
        except Exception as exc:  # any other unpickling failure means a corrupt file
            raise RisbenchError(f"{p.refs}: not a readable refs pickle ({type(exc).__name__}); {p.layout()}") from None
        if not isinstance(refs, list):
            raise RisbenchError(f"{p.refs}: expected a pickled list of refs, got {type(refs).__name__}; {p.layout()}")
        return refs

    @staticmethod
    def _load_instances(p: ReferPaths) -> dict[str, Any]:
        if not p.instances.is_file():
            raise RisbenchError(f"{p.instances}: instances file not found; {p.layout()}")
        try:
            inst = json.loads(p.instances.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RisbenchError(f"{p.instances}: not valid JSON ({exc}); {p.layout()}") from None
        if not isinstance(inst, dict) or "images" not in inst or "annotations" not in inst:
            raise RisbenchError(f"{p.instances}: expected a COCO dict with images and annotations; {p.layout()}")
        return inst

    def present_splits(self) -> list[str]:
        present = {str(r["split"]) for r in self.refs}
        return sorted(present, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))

    def expected_splits(self) -> tuple[str, ...]:
        known = self.cfg.dataset in KNOWN_DATASETS
        return EXPECTED_SPLITS.get(self.cfg.split_by, ()) if known else ()

    def split_refs(self, split: str) -> list[dict[str, Any]]:
        """The refs of `split` (REFER's rule: testA also takes testAB refs; test takes every test* ref)."""
        allowed = [*self.expected_splits(), *self.present_splits()]
        if split not in allowed:
            raise RisbenchError(
                f"unknown split '{split}' for {self.cfg.dataset} ({self.cfg.split_by}) in {self.paths.refs}; "
                f"known: {', '.join(dict.fromkeys(allowed))}; {self.paths.layout()}"
            )
        if split in ("testA", "testB", "testC"):
            refs = [r for r in self.refs if str(r["split"]).startswith("test") and split[-1] in str(r["split"])]
        elif split == "test":
            refs = [r for r in self.refs if "test" in str(r["split"])]
        else:
            refs = [r for r in self.refs if r["split"] == split]
        refs = [r for r in refs if self.sentences(r)]
        if not refs:
            raise RisbenchError(f"split '{split}' has no refs in {self.paths.refs}; {self.paths.layout()}")
        return refs

    def sentences(self, ref: dict[str, Any]) -> list[Sentence]:
        out = []
        for i, s in enumerate(ref["sentences"]):
            exists = bool(s.get("exist", True))
            if not exists and not self.cfg.robust:
                continue
            text = s.get("sent", s.get("raw", ""))
            out.append(Sentence(int(s.get("sent_id", i)), str(text), exists))
        return out

    def image_path(self, image_id: int) -> Path:
        return self.paths.images / self.images[image_id]["file_name"]

    def mask(self, ann_id: int) -> np.ndarray:
        ann = self.anns[ann_id]
        img = self.images[ann["image_id"]]
        try:
            return decode_segmentation(ann["segmentation"], int(img["height"]), int(img["width"]))
        except Exception as exc:  # pycocotools raises assorted types on malformed input
            raise RisbenchError(f"{self.paths.instances}: annotation {ann_id} has a bad segmentation ({exc})") from None


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (polygons, multi-polygons, RLE with list or string counts) -> uint8 (H, W) in {0, 1}."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):  # one or several polygons: union of the parts
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE (crowd)
        rle = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict):
        counts = seg["counts"]
        rle = {"size": seg["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unknown segmentation type {type(seg).__name__}")
    return (mask_utils.decode(rle) > 0).astype(np.uint8)


_CACHE: dict[tuple, ReferData] = {}


def load_refer(cfg: ReferConfig) -> ReferData:
    """ReferData for `cfg`, cached per process (the splits of one dataset share one load; one kept at a time)."""
    p = paths(cfg)
    stamp = tuple(f.stat().st_mtime_ns if f.is_file() else None for f in (p.refs, p.instances))
    key = (*dataclasses.astuple(cfg), stamp)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = ReferData(cfg)
    return _CACHE[key]


def read_image(path: Path) -> np.ndarray:
    """An image of the dataset, decoded (a missing or truncated file is a RisbenchError naming it)."""
    return read_rgb(path)


@DATASETS.register("refer", config=ReferConfig)
class ReferDataset(RefDataset):
    """RefCOCO / RefCOCO+ / RefCOCOg (and R-RefCOCO) in the REFER layout, masks via pycocotools."""

    def __init__(
        self,
        cfg: ReferConfig,
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
        self.split = split
        self.data = load_refer(cfg)
        refs = self.data.split_refs(split)
        self.refs = [(int(r["ref_id"]), int(r["ann_id"]), int(r["image_id"]), self.data.sentences(r)) for r in refs]
        self._counts = np.array([len(r[3]) for r in self.refs], dtype=np.int64)

    @classmethod
    def split_names(cls, cfg: ReferConfig) -> list[str]:
        data = load_refer(cfg)
        return list(dict.fromkeys([*data.expected_splits(), *data.present_splits()]))

    @classmethod
    def train_texts(cls, cfg: ReferConfig) -> list[str]:
        data = load_refer(cfg)
        return [s.text for r in data.split_refs("train") for s in data.sentences(r)]

    def num_refs(self) -> int:
        return len(self.refs)

    def sentence_counts(self) -> np.ndarray:
        return self._counts

    def load_ref(self, index: int) -> LoadedRef:
        ref_id, ann_id, image_id, sentences = self.refs[index]
        path = self.data.image_path(image_id)
        if not path.is_file():
            raise RisbenchError(f"image not found: {path}; {self.data.paths.layout()}")
        image = read_image(path)
        mask = self.data.mask(ann_id)
        if image.shape[:2] != mask.shape:
            raise RisbenchError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]} but {self.data.paths.instances} says "
                f"{mask.shape[1]}x{mask.shape[0]}"
            )
        return LoadedRef(image=image, mask=mask, ref_id=ref_id, image_id=image_id, sentences=sentences)


def check(cfg: ReferConfig, only_split: str | None = None) -> dict[str, Any]:
    """Verify the layout: per split the counts of refs, sentences (positives, negatives) and images, and what is
    missing.
    With `only_split`, just that split, and an unknown or empty split is an error."""
    data = load_refer(cfg)
    splits: dict[str, dict[str, int]] = {}
    missing: list[str] = []
    names = [only_split] if only_split else dict.fromkeys([*data.expected_splits(), *data.present_splits()])
    for split in names:
        try:
            refs = data.split_refs(split)
        except RisbenchError:
            if only_split:
                raise
            missing.append(f"split '{split}' (no refs in {data.paths.refs})")
            splits[split] = {"refs": 0, "sentences": 0, "positives": 0, "negatives": 0, "images": 0}
            continue
        sents = [s for r in refs for s in data.sentences(r)]
        images = {r["image_id"] for r in refs}
        splits[split] = {
            "refs": len(refs),
            "sentences": len(sents),
            "positives": sum(s.exists for s in sents),
            "negatives": sum(not s.exists for s in sents),
            "images": len(images),
        }
        missing += [str(data.image_path(i)) for i in sorted(images) if not data.image_path(i).is_file()]
    if not data.paths.images.is_dir():
        missing.insert(0, f"{data.paths.images}/ (image folder)")
    return {"paths": data.paths, "splits": splits, "missing": list(dict.fromkeys(missing))}
