"""Drawing SynthRef scenes (object placement, backgrounds) and the words of each expression.

The scene model, the vocabulary and the rules that make an expression pick out exactly one object are in
`synthref_scene.py`; this module turns them into a random scene with its refs and sentences.
"""

from __future__ import annotations

import numpy as np

from risbench.data.synthref_scene import (
    COLOURS,
    EXTENT,
    FLAVOURS,
    GENERIC_NOUNS,
    RELATIONS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    SPACING,
    Background,
    Descriptor,
    Expr,
    Scene,
    SceneObject,
    SynthRef,
    _pick,
    candidate_exprs,
    negative_exprs,
    unique_descriptors,
)

# -- words ---------------------------------------------------------------------------------------------------


def _noun_phrase(d: Descriptor, rng: np.random.Generator) -> str:
    words = []
    if d.size is not None:
        words.append(_pick(rng, SIZE_WORDS[d.size]))
    if d.colour is not None:
        words.append(d.colour)
    words.append(d.shape if d.shape is not None else _pick(rng, GENERIC_NOUNS))
    return " ".join(words)


def caption(objects: list[SceneObject], rng: np.random.Generator) -> str:
    """A scene caption naming every object, in random order: "a small red circle and a big blue star ..."
    (the image-text pairs of pretraining: every masked word is readable from the image)."""
    parts = [
        f"a {_pick(rng, SIZE_WORDS[o.size])} {o.colour} {o.shape}"
        for o in (objects[i] for i in rng.permutation(len(objects)))
    ]
    return " and ".join(parts)


def object_caption(objects: list[SceneObject], rng: np.random.Generator) -> tuple[str, int]:
    """One object of the scene, named in full: ("a small red circle", its index). Unlike a scene caption, a
    masked word can't be filled in by elimination (the colour the other objects' words leave over): with
    the others masked or not, the words left must be found in the pixels and the masked one read there."""
    i = int(rng.integers(len(objects)))
    o = objects[i]
    return f"a {_pick(rng, SIZE_WORDS[o.size])} {o.colour} {o.shape}", i


def _region_phrase(region, rng: np.random.Generator, prefix: bool) -> str:
    h, v = region
    if (h, v) == ("middle", "middle"):
        return _pick(rng, ("in the middle", "in the center")) if not prefix else _pick(rng, ("middle", "center"))
    if h is not None and v is not None:
        return f"{v} {h}" if prefix else _pick(rng, (f"in the {v} {h}", f"at the {v} {h}", f"{v} {h}"))
    if h is not None:
        return h if prefix else _pick(rng, (f"on the {h}", f"on {h}", f"at the {h}"))
    return v if prefix else _pick(rng, (f"at the {v}", f"on {v}", f"at {v}"))


def realise(e: Expr, flavour: str, rng: np.random.Generator) -> str:
    """Words for an expression structure (random surface form)."""
    np_t = _noun_phrase(e.target, rng)
    if e.kind == "plain":
        if flavour == "refcocog":
            return _pick(rng, (f"there is a {np_t} in the picture", f"the {np_t} in the image"))
        if flavour == "refcoco+" and e.target.colour is not None and e.target.shape is not None and rng.random() < 0.2:
            size = f"{_pick(rng, SIZE_WORDS[e.target.size])} " if e.target.size else ""
            return f"the {size}{e.target.shape} that is {e.target.colour}"
        return _pick(rng, ("the ", "", "a ")) + np_t
    if e.kind == "region":
        if rng.random() < 0.5:
            return f"{_pick(rng, ('the ', ''))}{_region_phrase(e.region, rng, True)} {np_t}"
        return f"{_pick(rng, ('the ', ''))}{np_t} {_region_phrase(e.region, rng, False)}"
    if e.kind == "superlative":
        return f"{_pick(rng, ('the ', ''))}{e.superlative} {np_t}"
    assert e.anchors and e.relation is not None
    rel = _pick(rng, RELATIONS[e.relation][2])
    np_a = _noun_phrase(_pick(rng, e.anchors), rng)
    return _pick(
        rng,
        (
            f"the {np_t} that is {rel} the {np_a}",
            f"a {np_t} {rel} a {np_a}",
            f"the {np_t} which is located {rel} the {np_a}",
            f"the {np_t} placed {rel} the {np_a}",
            f"{np_t} {rel} the {np_a}",
        ),
    )


# -- scenes --------------------------------------------------------------------------------------------------


def _place_objects(rng: np.random.Generator, n: int, duplicate_prob: float, scale: float) -> list[SceneObject]:
    objects: list[SceneObject] = []
    for _ in range(n):
        if objects and rng.random() < duplicate_prob:  # a look-alike: position is needed to tell them apart
            src = _pick(rng, objects)
            shape, colour = src.shape, src.colour
            size = src.size if rng.random() < 0.7 else _pick(rng, list(SIZES))
        else:
            shape, colour, size = _pick(rng, SHAPES), _pick(rng, list(COLOURS)), _pick(rng, list(SIZES))
        r = SIZES[size] * scale * (0.9 + 0.2 * rng.random())
        ext = EXTENT * r
        for _try in range(60):
            x, y = ext + (1 - 2 * ext) * rng.random(), ext + (1 - 2 * ext) * rng.random()
            if all((x - o.x) ** 2 + (y - o.y) ** 2 >= (ext + EXTENT * o.r + SPACING) ** 2 for o in objects):
                tint = tuple(int(v) for v in rng.integers(-18, 19, size=3))
                objects.append(SceneObject(shape, colour, size, float(x), float(y), float(r), tint))
                break
    return objects


def _background(rng: np.random.Generator) -> Background:
    grey = 95 + 70 * rng.random()
    base = tuple(int(np.clip(grey + 14 * (rng.random() - 0.5), 0, 255)) for _ in range(3))
    return Background(
        kind=_pick(rng, ("noise", "stripes", "both")),
        base=base,
        amplitude=float(12 + 18 * rng.random()),
        stripe_freq=float(3 + 9 * rng.random()),
        stripe_angle=float(np.pi * rng.random()),
        stripe_phase=float(2 * np.pi * rng.random()),
        seed=int(rng.integers(2**31)),
    )


def make_scene(
    rng: np.random.Generator,
    flavour: str,
    *,
    min_objects: int = 3,
    max_objects: int = 5,
    refs_per_scene: int = 2,
    sentences_per_ref: int = 3,
    negative_fraction: float = 0.0,
    object_scale: float = 1.0,
) -> Scene:
    """A scene with `refs_per_scene` refs of `sentences_per_ref` sentences each.

    Each sentence after a ref's first is negative with probability `negative_fraction` (the first is always
    positive, so every ref has a target). `object_scale` multiplies every object's radius."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown SynthRef flavour '{flavour}' (known: {', '.join(FLAVOURS)})")
    duplicate_prob = {"refcoco": 0.35, "refcoco+": 0.15, "refcocog": 0.25}[flavour]
    for _attempt in range(1000):
        n = int(rng.integers(min_objects, max_objects + 1))
        objects = _place_objects(rng, n, duplicate_prob, object_scale)
        if len(objects) < max(min_objects, refs_per_scene):
            continue
        order = rng.permutation(len(objects))
        unique = unique_descriptors(objects) if flavour == "refcocog" else []
        picked: list[tuple[int, list[Expr]]] = []
        for t in order:
            cands = candidate_exprs(objects, int(t), flavour, unique)
            if cands:
                picked.append((int(t), cands))
                if len(picked) == refs_per_scene:
                    break
        if len(picked) == refs_per_scene:
            break
    else:
        raise ValueError(
            f"could not draw a {flavour} scene with {refs_per_scene} referable objects; lower refs_per_scene"
        )
    refs = []
    for t, cands in picked:
        # RefCOCO flavour: favour sentences with position words, as in RefCOCO.
        positional = [e for e in cands if e.kind != "plain"]
        plain = [e for e in cands if e.kind == "plain"]
        sentences = []
        for j in range(sentences_per_ref):
            if j > 0 and negative_fraction > 0 and rng.random() < negative_fraction:
                sentences.append((realise(negative_exprs(objects, flavour, rng), flavour, rng), False))
                continue
            pool = positional if positional and (not plain or rng.random() < 0.6) else plain
            sentences.append((realise(_pick(rng, pool), flavour, rng), True))
        refs.append(SynthRef(t, sentences))
    return Scene(objects, _background(rng), refs)
