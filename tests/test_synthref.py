"""SynthRef: every positive expression picks out exactly its object, every negative none, checked by an
independent parser against the scene description (not the pixels); flavours; determinism; rendering."""

from __future__ import annotations

import re

import numpy as np
import pytest

from risbench.data.build import build_dataset
from risbench.data.synthref import SceneSource, SynthRefConfig

# -- an independent reading of the SynthRef language (its own lexicon and semantics) ----------------------
COLOURS = {"red", "green", "blue", "yellow", "purple", "orange"}
SHAPES = {"circle", "square", "triangle", "star", "diamond", "cross"}
SIZES = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
NOUNS = {"one", "object", "shape", "thing"}
FILLER = {"the", "a", "that", "is", "which", "located", "placed", "there", "in", "picture", "image", "on", "at"}
RELATIONS = [  # phrase -> (axis, sign): target relates to anchor when sign * (target - anchor) > 0
    ("to the left of", (0, -1)),
    ("on the left side of", (0, -1)),
    ("left of", (0, -1)),
    ("to the right of", (0, 1)),
    ("on the right side of", (0, 1)),
    ("right of", (0, 1)),
    ("above", (1, -1)),
    ("over", (1, -1)),
    ("below", (1, 1)),
    ("under", (1, 1)),
    ("beneath", (1, 1)),
]
SUPERLATIVES = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "highest": (1, 1)}
SUPERLATIVES |= {"lowest": (1, -1), "bottommost": (1, -1)}
REGIONS = {"left": (0, 0, 1 / 3), "right": (0, 2 / 3, 1), "top": (1, 0, 1 / 3), "bottom": (1, 2 / 3, 1)}
POSITION = {"left", "right", "top", "bottom", "middle", "center", "above", "below", "over", "under", "beneath"}
POSITION |= set(SUPERLATIVES) | {"side", "upper", "lower", "near", "next", "behind", "front", "corner"}
VOCAB = COLOURS | SHAPES | set(SIZES) | NOUNS | FILLER | POSITION | {"of", "to"}


def coord(o, axis):
    return o.x if axis == 0 else o.y


def parse_descriptor(words):
    d = {"size": None, "colour": None, "shape": None}
    for w in words:
        if w in COLOURS:
            d["colour"] = w
        elif w in SHAPES:
            d["shape"] = w
        elif w in SIZES:
            d["size"] = SIZES[w]
    assert d["colour"] or d["shape"], f"descriptor without colour or shape: {words}"
    return d


def fits(d, o):
    return all(v is None or getattr(o, k) == v for k, v in d.items())


def match(text, objects):
    """Indices of the scene objects that `text` describes."""
    padded = f" {text} "
    for phrase, (axis, sign) in RELATIONS:
        if f" {phrase} " in padded:
            left, right = padded.split(f" {phrase} ", 1)
            target, anchor = parse_descriptor(left.split()), parse_descriptor(right.split())
            anchors = [a for a in objects if fits(anchor, a)]
            return [
                i
                for i, o in enumerate(objects)
                if fits(target, o) and any(a is not o and sign * (coord(o, axis) - coord(a, axis)) > 0 for a in anchors)
            ]
    words = text.split()
    d = parse_descriptor(words)
    found = [i for i, o in enumerate(objects) if fits(d, o)]
    for w in words:
        if w in SUPERLATIVES and found:
            axis, sign = SUPERLATIVES[w]
            found = [min(found, key=lambda i: sign * coord(objects[i], axis))]
        elif w in REGIONS:
            axis, lo, hi = REGIONS[w]
            found = [i for i in found if lo <= coord(objects[i], axis) <= hi]
        elif w in ("middle", "center"):
            found = [i for i in found if all(1 / 3 <= coord(objects[i], a) <= 2 / 3 for a in (0, 1))]
    return found


# -- the checks ----------------------------------------------------------------------------------------------
N_SCENES = 2500  # x 2 refs = 5,000 refs (15,000 sentences) per flavour


@pytest.mark.parametrize("flavour", ["refcoco", "refcoco+", "refcocog"])
def test_expressions_pick_out_exactly_their_object(flavour):
    cfg = SynthRefConfig(flavour=flavour, num_val=N_SCENES, negative_fraction=0.25, seed=3)
    source = SceneSource(cfg, "val")
    counts = {"refs": 0, "pos": 0, "neg": 0, "position": 0, "relation": 0}
    lengths = []
    for i in range(N_SCENES):
        scene = source.scene(i)
        assert 3 <= len(scene.objects) <= 5
        for ref in scene.refs:
            counts["refs"] += 1
            assert len(ref.sentences) == 3 and ref.sentences[0][1], "3 sentences, the first positive"
            for text, exists in ref.sentences:
                words = text.split()
                lengths.append(len(words))
                assert set(words) <= VOCAB, f"unknown words in {text!r}"
                got = match(text, scene.objects)
                if exists:
                    counts["pos"] += 1
                    assert got == [ref.object_index], (text, got, ref.object_index, scene.objects)
                else:
                    counts["neg"] += 1
                    assert got == [], (text, got, scene.objects)
                has_pos = bool(set(words) & POSITION)
                counts["position"] += has_pos
                counts["relation"] += any(f" {p} " in f" {text} " for p, _ in RELATIONS)
                if flavour == "refcoco+":
                    assert not has_pos, f"position word in a RefCOCO+ expression: {text!r}"
                if flavour == "refcocog":
                    assert any(f" {p} " in f" {text} " for p, _ in RELATIONS), text
    assert counts["refs"] == 2 * N_SCENES and counts["pos"] >= 5000 and counts["neg"] > 500
    if flavour == "refcoco":  # position words are common, as in RefCOCO
        assert counts["position"] > 0.3 * (counts["pos"] + counts["neg"])
    if flavour == "refcocog":  # longer sentences
        assert np.mean(lengths) >= 8
    else:
        assert np.mean(lengths) <= 6


def test_matcher_reads_relations_and_regions():
    from risbench.data.synthref_scene import SceneObject

    objs = [
        SceneObject("circle", "red", "small", 0.1, 0.5, 0.07),
        SceneObject("circle", "red", "small", 0.9, 0.5, 0.07),
        SceneObject("square", "blue", "large", 0.5, 0.2, 0.13),
    ]
    assert match("the red circle on the left", objs) == [0]
    assert match("rightmost circle", objs) == [1]
    assert match("red circle", objs) == [0, 1]
    assert match("the circle to the right of the blue square", objs) == [1]
    assert match("a red one below a blue shape", objs) == [0, 1]
    assert match("the green star", objs) == []


def test_deterministic_and_disjoint_splits():
    cfg = SynthRefConfig(flavour="refcocog", num_train=50, num_val=50, seed=7)
    a = [SceneSource(cfg, "train").scene(i) for i in range(50)]
    b = [SceneSource(cfg, "train").scene(i) for i in range(50)]
    val = [SceneSource(cfg, "val").scene(i) for i in range(50)]
    assert [s.refs for s in a] == [s.refs for s in b] and [s.objects for s in a] == [s.objects for s in b]
    assert not {str(s.objects) for s in a} & {str(s.objects) for s in val}
    other_seed = SceneSource(SynthRefConfig(flavour="refcocog", num_train=50, seed=8), "train").scene(0)
    assert other_seed.objects != a[0].objects


def test_object_scale_scales_every_radius():
    def radii(scale: float) -> list[float]:
        source = SceneSource(SynthRefConfig(num_train=30, object_scale=scale), "train")
        return [o.r for i in range(30) for o in source.scene(i).objects]

    base, big = radii(1.0), radii(1.5)
    assert 0.075 * 0.9 <= min(base) and max(base) <= 0.135 * 1.1
    assert 1.5 * 0.075 * 0.9 <= min(big) and max(big) <= 1.5 * 0.135 * 1.1
    with pytest.raises(ValueError, match="object_scale"):
        SynthRefConfig(object_scale=0.0)


def test_render_masks_follow_the_description():
    ds = build_dataset(
        {"name": "synthref", "flavour": "refcoco", "num_val": 40},
        "val",
        image_size=128,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        train=False,
    )
    for i in range(40):
        scene = ds.source.scene(i)
        image, labels = ds.render(i)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert set(np.unique(labels)) == set(range(len(scene.objects) + 1))
        for k, o in enumerate(scene.objects):
            ys, xs = np.nonzero(labels == k + 1)
            # the mask lies within the object's extent and is centred on it
            assert abs((xs.mean() + 0.5) / 128 - o.x) < 0.35 * o.r + 0.01
            assert np.all(np.hypot((xs + 0.5) / 128 - o.x, (ys + 0.5) / 128 - o.y) <= 1.1 * o.r + 1e-6)
            assert len(xs) > 0.4 * np.pi * (o.r * 128) ** 2 * 0.5


def test_train_one_sentence_per_ref_eval_all():
    data = {"name": "synthref", "flavour": "refcoco+", "num_train": 30, "negative_fraction": 0.5}
    kw = {"image_size": 64, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    train = build_dataset(data, "train", train=True, seed=1, **kw)
    evald = build_dataset(data, "train", train=False, **kw)
    assert len(train) == 60 and len(evald) == 180
    s = evald[4]
    assert s["image"].shape == (3, 64, 64) and s["mask"].shape == (64, 64)
    assert s["meta"]["orig_mask"].shape == (128, 128) and s["meta"]["orig_size"] == (128, 128)
    sent_ids = [evald[i]["meta"]["sent_id"] for i in range(len(evald))]
    assert len(set(sent_ids)) == 180
    negatives = [evald[i] for i in range(len(evald)) if not evald[i]["exists"]]
    assert negatives and all(n["mask"].sum() == 0 and n["meta"]["orig_mask"].sum() == 0 for n in negatives)
    positives = [evald[i] for i in range(len(evald)) if evald[i]["exists"]]
    assert all(p["mask"].sum() > 0 for p in positives)
    epoch0 = [train[i]["meta"]["sent_id"] for i in range(len(train))]
    assert epoch0 == [train[i]["meta"]["sent_id"] for i in range(len(train))]
    train.set_epoch(1)
    epoch1 = [train[i]["meta"]["sent_id"] for i in range(len(train))]
    assert epoch0 != epoch1
    assert [r // 3 for r in epoch0] == [train[i]["meta"]["ref_id"] for i in range(len(train))]


def test_bad_flavour_and_split():
    from risbench.errors import RisbenchError

    with pytest.raises(RisbenchError, match="flavour"):
        build_dataset(
            {"name": "synthref", "flavour": "refclef"}, "val", image_size=64, mean=(0,) * 3, std=(1,) * 3, train=False
        )
    with pytest.raises(RisbenchError, match="split 'testA'"):
        build_dataset("synthref-refcoco", "testA", image_size=64, mean=(0,) * 3, std=(1,) * 3, train=False)


def test_refcoco_plus_vocabulary_has_no_position_words():
    from risbench.data.build import train_texts

    words = {w for t in train_texts({"name": "synthref", "flavour": "refcoco+", "num_train": 300}) for w in t.split()}
    assert not words & POSITION and not re.search(r"\d", " ".join(words))


def test_cli_stats(capsys):
    from risbench.cli.main import main

    assert main(["data", "stats", "--dataset", "synthref-refcoco+-robust", "--limit", "30"]) == 0
    out = capsys.readouterr().out
    assert "synthref-refcoco+-robust (flavour refcoco+" in out and "train scenes  20000  refs  40000" in out
    assert "vocabulary (" in out and "objects per scene {" in out
    assert main(["data", "stats", "--dataset", "refcoco-unc"]) == 2


def test_star_fold_equals_even_odd_polygon():
    from risbench.data import synthref_render as R

    g = (np.arange(-300, 300) + 0.5) / 211
    dx, dy = g[None, :], g[:, None]
    folded = R._inside_star(dx, dy)
    assert folded.sum() > 10000 and np.array_equal(folded, R._inside_polygon(dx, dy, R._POLYGONS["star"]))


def test_breakdown_groups_sentences_by_word_kinds(tmp_path, capsys):
    import pandas as pd

    from risbench.cli.main import main
    from risbench.data.synthref_analysis import breakdown, word_kinds

    assert word_kinds("the little circle that is red") == "size+colour+shape"
    assert word_kinds("a red star to the left of the blue square") == "colour+shape+relation"
    assert word_kinds("the leftmost green one") == "colour+position"
    assert word_kinds("the thing") == "none"
    frame = pd.DataFrame(
        {
            "exists": [True, True, True, False],
            "iou": [80.0, 20.0, 60.0, 0.0],
            "sentence": ["red one", "blue one", "the star", "a green cross"],
        }
    )
    table = breakdown(frame)
    assert table.loc["colour"].tolist() == [2, 50.0, 50.0] and table.loc["shape"].tolist() == [1, 60.0, 100.0]
    assert "shape+colour" not in table.index and len(table) == 2  # the negative sentence is left out
    csv = tmp_path / "per_sentence.csv"
    frame.to_csv(csv, index=False)
    assert main(["data", "breakdown", str(csv)]) == 0
    assert "| colour | 2 | 50 | 50 |" in capsys.readouterr().out
    assert main(["data", "breakdown", str(tmp_path / "missing.csv")]) == 2
    assert "--per-sentence" in capsys.readouterr().err


def test_captions_name_every_object_and_cover_the_expressions_vocabulary():
    """`text: captions` (pretraining pairs): one caption per scene naming each object by size word, colour
    and shape; its mask is every object; the tokenizer texts keep the expressions too."""
    from risbench.data.build import build_dataset, train_texts
    from risbench.data.synthref import SceneSource, SynthRefConfig
    from risbench.data.synthref_scene import SIZE_WORDS

    cfg = {"name": "synthref", "flavour": "refcoco+", "num_train": 6, "num_val": 3, "text": "captions"}
    ds = build_dataset(cfg, "val", image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, train=False)
    source = SceneSource(SynthRefConfig(flavour="refcoco+", num_train=6, num_val=3, text="captions"), "val")
    assert len(ds) == 3
    for i in range(3):
        item, scene = ds[i], source.scene(i)
        size_of = {w: size for size, words in SIZE_WORDS.items() for w in words}
        described = sorted((size_of[w[1]], w[2], w[3]) for w in (p.split() for p in item["text"].split(" and ")))
        assert described == sorted((o.size, o.colour, o.shape) for o in scene.objects)
        assert item["mask"].sum() > 0 and item["exists"]
    both = build_dataset({**cfg, "text": "both"}, "val", image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, train=False)
    assert len(both) == 3 * (2 * 3 + 1)  # per scene: 2 refs x 3 sentences, then the caption
    texts = train_texts(cfg)
    assert any(" and " in t for t in texts) and any(t.startswith("the ") for t in texts)


def test_object_captions_name_one_object_and_mask_it():
    """`text: objects` (pretraining pairs): one caption per scene naming one of its objects in full (size
    word, colour, shape); its mask is exactly that object's pixels, not the others'."""
    import numpy as np

    from risbench.data.build import build_dataset
    from risbench.data.synthref import SceneSource, SynthRefConfig
    from risbench.data.synthref_render import render
    from risbench.data.synthref_scene import SIZE_WORDS

    cfg = {"name": "synthref", "flavour": "refcoco+", "num_train": 6, "num_val": 8, "text": "objects"}
    ds = build_dataset(cfg, "val", image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, train=False)
    source = SceneSource(SynthRefConfig(flavour="refcoco+", num_train=6, num_val=8, text="objects"), "val")
    assert len(ds) == 8
    size_of = {w: size for size, words in SIZE_WORDS.items() for w in words}
    named = set()
    for i in range(8):
        scene = source.scene(i)
        text, target = source.caption(i)
        article, size, colour, shape = text.split()
        o = scene.objects[target]
        assert (article, size_of[size], colour, shape) == ("a", o.size, o.colour, o.shape)
        _, labels = render(scene, 128)
        ref = ds.dataset.load_ref(i) if hasattr(ds, "dataset") else ds.load_ref(i)
        assert ref.sentences[0].text == text
        assert np.array_equal(ref.mask.astype(bool), labels == target + 1)
        named.add(target)
    assert len(named) > 1  # not always the first object
