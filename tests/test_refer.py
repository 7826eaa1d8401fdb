"""The REFER-format loader on a small dataset written here (JPEG images, a refs pickle, an instances json with
polygon, multi-polygon and RLE segmentations), the SynthRef export read back, and the error cases."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from risbench.cli.main import main
from risbench.data.build import build_dataset, split_names, train_texts
from risbench.errors import RisbenchError

KW = {"image_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

SIZES = {1: (60, 80), 2: (50, 70), 3: (40, 40), 4: (64, 48)}  # image_id -> (height, width)


def _rle_uncompressed(m: np.ndarray) -> dict:
    """COCO crowd-style RLE: counts as a list, column-major, starting with zeros."""
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def _annotations():
    crowd = np.zeros(SIZES[2], dtype=np.uint8)
    crowd[5:30, 10:20] = 1
    crowd[40:45, 50:69] = 1
    compressed = np.zeros(SIZES[3], dtype=np.uint8)
    compressed[3:25, 7:33] = 1
    enc = mask_utils.encode(np.asfortranarray(compressed))
    return [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [[10.5, 5.0, 60.2, 8.0, 40.0, 50.7, 12.0, 40.0]],
        },  # one polygon
        {
            "id": 11,
            "image_id": 1,
            "category_id": 2,
            "iscrowd": 0,
            "segmentation": [
                [1, 1, 20, 1, 20, 20, 1, 20],
                [30.3, 30, 70, 32, 75.5, 55, 35, 58],
                [15, 10, 25, 10, 25, 25],
            ],
        },  # multi-polygon, overlapping parts
        {"id": 20, "image_id": 2, "category_id": 1, "iscrowd": 1, "segmentation": _rle_uncompressed(crowd)},
        {
            "id": 30,
            "image_id": 3,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": {"size": enc["size"], "counts": enc["counts"].decode("ascii")},
        },  # compressed RLE
        {"id": 40, "image_id": 4, "category_id": 2, "iscrowd": 0, "segmentation": [[5, 5, 40, 6, 44, 60, 4, 50]]},
    ]


def _sent(sid, text, exist=None):
    s = {"sent_id": sid, "raw": text.upper(), "sent": text, "tokens": text.split()}
    if exist is not None:
        s["exist"] = exist
    return s


def _ref(ref_id, ann_id, image_id, category_id, split, *sentences):
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "split": split,
        "file_name": f"x_{ann_id}.jpg",  # REFER's own file_name carries an ann suffix; the loader ignores it
        "sent_ids": [x["sent_id"] for x in sentences],
        "sentences": list(sentences),
    }


REFS = [
    _ref(100, 10, 1, 1, "train", _sent(1, "man on left"), _sent(2, "left guy"), _sent(3, "blue shirt")),
    _ref(101, 11, 1, 2, "train", _sent(4, "the dog"), _sent(5, "a cat on the sofa", exist=False)),
    _ref(102, 40, 4, 2, "train", _sent(6, "big tree")),
    _ref(200, 20, 2, 1, "val", _sent(7, "crowd of people"), _sent(8, "people in back")),
    _ref(300, 30, 3, 3, "testA", _sent(9, "red car"), _sent(10, "car"), _sent(11, "vehicle")),
    _ref(400, 40, 4, 2, "testB", _sent(12, "the tree on the right")),
]


def write_refer(root, refs=REFS, folder="refcoco"):
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "images" / "train2014").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for image_id, (h, w) in SIZES.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / "train2014" / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    inst = {
        "images": images,
        "annotations": _annotations(),
        "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)],
    }
    (root / folder / "instances.json").write_text(json.dumps(inst))
    with open(root / folder / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return {"name": "refer", "root": str(root), "dataset": "refcoco", "split_by": "unc", "folder": folder}


def coco_mask(ann, h, w):
    """The reference decoding, straight from pycocotools."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle)


def test_masks_pixel_exact_and_splits(tmp_path):
    cfg = write_refer(tmp_path)
    anns = {a["id"]: a for a in _annotations()}
    assert split_names(cfg) == ["train", "val", "testA", "testB"]
    sizes = {"train": (3, 5), "val": (1, 2), "testA": (1, 3), "testB": (1, 1)}  # robust off: the negative is dropped
    seen_anns = set()
    for split, (n_refs, n_sents) in sizes.items():
        ev = build_dataset(cfg, split, train=False, **KW)
        tr = build_dataset(cfg, split, train=True, **KW)
        assert len(tr) == n_refs and len(ev) == n_sents
        for i in range(len(ev)):
            s = ev[i]
            ref = next(r for r in REFS if r["ref_id"] == s["meta"]["ref_id"])
            h, w = SIZES[ref["image_id"]]
            expected = coco_mask(anns[ref["ann_id"]], h, w)
            assert s["meta"]["orig_mask"].shape == (h, w) and s["meta"]["orig_size"] == (h, w)
            assert np.array_equal(s["meta"]["orig_mask"], (expected > 0).astype(np.uint8))
            assert expected.sum() > 0 and s["exists"]
            assert s["image"].shape == (3, 32, 32) and s["mask"].shape == (32, 32)
            assert set(np.unique(s["mask"].numpy())) <= {0.0, 1.0}
            seen_anns.add(ref["ann_id"])
        # every sentence once in evaluation, in ref order
        assert [ev[i]["meta"]["sent_id"] for i in range(len(ev))] == [
            x["sent_id"] for r in REFS if r["split"] == split for x in r["sentences"] if x.get("exist", True)
        ]
    assert seen_anns == {10, 11, 20, 30, 40}
    # the multi-polygon's parts overlap: the mask is their union (0/1), not their sum
    parts = mask_utils.decode(mask_utils.frPyObjects(anns[11]["segmentation"], 60, 80)).astype(int).sum(2)
    assert parts.max() == 2
    ev = build_dataset(cfg, "train", train=False, **KW)
    dog = next(ev[i] for i in range(len(ev)) if ev[i]["meta"]["ref_id"] == 101)
    assert np.array_equal(dog["meta"]["orig_mask"], (parts > 0).astype(np.uint8))


def test_train_one_sentence_per_ref_chosen_per_epoch(tmp_path):
    cfg = write_refer(tmp_path)
    tr = build_dataset(cfg, "train", train=True, seed=5, **KW)
    assert len(tr) == 3
    picks = []
    for epoch in range(12):
        tr.set_epoch(epoch)
        picks.append(tuple(tr[i]["meta"]["sent_id"] for i in range(len(tr))))
    assert all(p[0] in (1, 2, 3) and p[1] == 4 and p[2] == 6 for p in picks)
    assert len({p[0] for p in picks}) == 3  # all sentences of ref 100 get their turn
    tr.set_epoch(3)
    again = build_dataset(cfg, "train", train=True, seed=5, **KW)
    again.set_epoch(3)
    assert [tr[i]["meta"]["sent_id"] for i in range(3)] == [again[i]["meta"]["sent_id"] for i in range(3)]
    assert train_texts(cfg) == ["man on left", "left guy", "blue shirt", "the dog", "big tree"]


def test_robust_negatives_have_empty_targets(tmp_path):
    cfg = write_refer(tmp_path, folder="rrefcoco")
    cfg = {**cfg, "robust": True}
    del cfg["folder"]  # robust: the folder defaults to r<dataset>
    ev = build_dataset(cfg, "train", train=False, **KW)
    assert len(ev) == 6
    neg = [ev[i] for i in range(len(ev)) if not ev[i]["exists"]]
    assert len(neg) == 1 and neg[0]["meta"]["sent_id"] == 5
    assert neg[0]["mask"].sum() == 0 and neg[0]["meta"]["orig_mask"].sum() == 0


def test_synthref_export_reads_back_identically(tmp_path):
    from risbench.data.export import export_refer
    from risbench.data.synthref import SynthRefConfig

    synth = {
        "name": "synthref",
        "flavour": "refcocog",
        "num_train": 12,
        "num_val": 6,
        "num_test": 5,
        "negative_fraction": 0.3,
        "seed": 11,
    }
    cfg = SynthRefConfig(**{k: v for k, v in synth.items() if k != "name"})
    data_cfg = export_refer(cfg, tmp_path)
    data_cfg.pop("description")
    assert (tmp_path / "synthref-refcocog" / "refs(unc).p").is_file()
    assert split_names(data_cfg) == ["train", "val", "test"]
    for split in ("train", "val", "test"):
        a = build_dataset(synth, split, train=False, **KW)
        b = build_dataset(data_cfg, split, train=False, **KW)
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert x["text"] == y["text"] and x["exists"] == y["exists"]
            assert np.array_equal(x["meta"]["orig_mask"], y["meta"]["orig_mask"])
            assert all(x["meta"][k] == y["meta"][k] for k in ("ref_id", "sent_id", "image_id", "orig_size"))
            assert np.array_equal(x["image"].numpy(), y["image"].numpy())  # PNG: lossless
            assert np.array_equal(x["mask"].numpy(), y["mask"].numpy())
    # the preset file written beside the export reads back too
    assert main(["data", "check", "--dataset", str(tmp_path / "synthref-refcocog.yaml")]) == 0


def test_synthref_export_as_jpeg_reads_back(tmp_path, capsys):
    """`risbench data synth --image-format jpeg`: REFER-layout JPEGs (for timing their decoding), the same
    refs and masks, the pixels within JPEG's loss."""
    from risbench.data.export import export_refer
    from risbench.data.synthref import SynthRefConfig

    synth = {"name": "synthref", "num_train": 4, "num_val": 2, "num_test": 2, "seed": 5}
    cfg = SynthRefConfig(**{k: v for k, v in synth.items() if k != "name"})
    data_cfg = export_refer(cfg, tmp_path, image_format="jpeg")
    files = sorted((tmp_path / "images" / "synthref-refcoco").iterdir())
    assert files and all(f.suffix == ".jpg" and f.read_bytes()[:2] == b"\xff\xd8" for f in files)
    a, b = build_dataset(synth, "val", train=False, **KW), build_dataset(data_cfg, "val", train=False, **KW)
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        assert a[i]["text"] == b[i]["text"] and np.array_equal(a[i]["mask"].numpy(), b[i]["mask"].numpy())
        assert not np.array_equal(a[i]["image"].numpy(), b[i]["image"].numpy())  # lossy
        assert np.abs(a[i]["image"].numpy() - b[i]["image"].numpy()).mean() < 0.2  # normalised units
    code, err = _cli_error(capsys, ["data", "synth", "--out", str(tmp_path / "x"), "--image-format", "webp"])
    assert code == 2 and "--image-format: expected png or jpeg, got 'webp'" in err


def _cli_error(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("case", ["no_refs", "no_instances", "bad_pickle", "bad_json", "no_images"])
def test_broken_layouts_exit_2_naming_the_file(tmp_path, capsys, case):
    cfg = write_refer(tmp_path)
    folder = tmp_path / "refcoco"
    target = {
        "no_refs": folder / "refs(unc).p",
        "no_instances": folder / "instances.json",
        "bad_pickle": folder / "refs(unc).p",
        "bad_json": folder / "instances.json",
        "no_images": tmp_path / "images" / "train2014" / "COCO_train2014_000000000003.jpg",
    }[case]
    if case.startswith("no_"):
        target.unlink()
    else:
        target.write_bytes(b"\x80\x04garbage{" if case == "bad_pickle" else b'{"images": [')
    code, err = _cli_error(capsys, ["data", "check", "--dataset", "refcoco-unc", "--root", str(tmp_path)])
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and str(target) in err and "expected layout" in err
    if case != "no_images":
        with pytest.raises(RisbenchError, match="expected layout"):
            build_dataset(cfg, "train", train=True, **KW)


def test_empty_and_unknown_splits_exit_2(tmp_path, capsys):
    cfg = write_refer(tmp_path, refs=[r for r in REFS if r["split"] != "testB"])
    refs_file = str(tmp_path / "refcoco" / "refs(unc).p")
    for split, what in (("testB", "has no refs"), ("testC", "unknown split")):
        code, err = _cli_error(
            capsys, ["data", "check", "--dataset", "refcoco-unc", "--root", str(tmp_path), "--split", split]
        )
        assert code == 2 and what in err and refs_file in err and "expected layout" in err and "\n" not in err
        with pytest.raises(RisbenchError, match=what):
            build_dataset(cfg, split, train=False, **KW)
    # the whole-layout check lists the empty split as missing
    code, err = _cli_error(capsys, ["data", "check", "--dataset", "refcoco-unc", "--root", str(tmp_path)])
    assert code == 2 and "split 'testB'" in err


def test_check_reports_counts(tmp_path, capsys):
    write_refer(tmp_path)
    assert main(["data", "check", "--dataset", "refcoco-unc", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train  refs       3  sentences       5  images      2" in out
    assert "testB  refs       1  sentences       1  images      1" in out and "layout ok" in out


def test_python2_pickle_reads_with_latin1(tmp_path):
    write_refer(tmp_path)
    # A protocol-2 pickle as python 2 writes it: str values as SHORT_BINSTRING ('U'), here with a latin-1 byte.
    body = b"\x80\x02]q\x00}q\x01(U\x06ref_idq\x02K\x01U\x03rawq\x03U\x04caf\xe9q\x04ua."
    path = tmp_path / "refcoco" / "refs(unc).p"
    path.write_bytes(body)
    from risbench.data.refer import ReferConfig, ReferData, paths

    refs = ReferData._load_refs(paths(ReferConfig(root=str(tmp_path))))
    assert refs == [{"ref_id": 1, "raw": "café"}]


def test_cli_synth_export_then_check(tmp_path, capsys):
    args = ["data", "synth", "--format", "refer", "--out", str(tmp_path), "--flavour", "refcoco"]
    args += ["--num-train", "4", "--num-val", "2", "--num-test", "2", "--seed", "5"]
    assert main(args) == 0
    preset = tmp_path / "synthref-refcoco.yaml"
    assert preset.is_file() and len(list((tmp_path / "images" / "synthref-refcoco").glob("*.png"))) == 8
    assert main(["data", "check", "--dataset", str(preset)]) == 0
    out = capsys.readouterr().out
    assert "train  refs       8  sentences      24  images      4" in out and "layout ok" in out
    assert main(["data", "synth", "--out", str(tmp_path), "--format", "coco"]) == 2


class _Hostile:
    """Unpickling this runs os.system, which would create a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_hostile_refs_pickle_is_refused_and_runs_nothing(tmp_path, capsys, protocol):
    """A refs pickle that names os.system is refused with one line and exit 2, and the file it would have
    created is not there (the restricted unpickler refuses every global but plain-data constructors)."""
    cfg = write_refer(tmp_path)
    target = tmp_path / "pwned"
    with open(tmp_path / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump([*REFS, {"ref_id": 9, "x": _Hostile(target)}], f, protocol=protocol)
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    code, err = _cli_error(capsys, ["data", "check", "--dataset", str(tmp_path / "d.yaml")])
    assert code == 2 and len(err.splitlines()) == 1
    assert "refused global" in err and "system" in err, err
    assert not target.exists()


def test_plain_data_pickles_still_load_sets_and_bytes():
    from risbench.data.safe_pickle import load_plain

    data = {"a": [1, 2.5, "x", None, True], "s": {1, 2}, "f": frozenset({3}), "b": b"\x00\xff", "t": (1, "y")}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert load_plain(pickle.dumps(data, protocol=protocol)) == data
