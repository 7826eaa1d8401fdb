"""SynthRef scenes and expressions, as descriptions only (no pixels).

A scene is a few objects (shape, colour, size class, centre, radius; coordinates normalised to [0, 1], x to
the right, y down) on a textured background. Expressions are built from the description and kept only if
they pick out exactly one object, checked on the description itself:

- appearance: "[size] [colour] noun", noun = the shape or a generic word ("one", "object", "shape", "thing");
  a descriptor names a colour or a shape (or both), and optionally the size class.
- absolute position (flavour "refcoco" only): regions of the image in thirds (x < 1/3 is "left", x > 2/3
  "right", y < 1/3 "top", y > 2/3 "bottom"; "in the middle" is the centre cell), and superlatives among the
  objects that fit the descriptor ("leftmost", "rightmost", "topmost", "lowest").
- relation (flavour "refcocog", every sentence): "<target> <relation> <anchor>" with relation "to the left
  of" (x_t < x_a), "to the right of", "above" (y_t < y_a), "below"; the anchor descriptor fits exactly one
  object, which does not fit the target descriptor.
- flavour "refcoco+" uses appearance only: no position or relation words (see POSITION_WORDS).

Margins keep expressions unambiguous to the eye: the target is at least MARGIN inside its region (or ahead
of the runner-up, or past the anchor), and every other object that fits the descriptor is at least SLACK
outside it. Negative expressions (robust setting) use a descriptor that fits no object of the scene.
Everything is deterministic from the numpy Generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 215, 40),
    "purple": (145, 60, 195),
    "orange": (245, 140, 25),
}
SIZES = {"small": 0.075, "large": 0.135}  # radius as a fraction of the image side
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
GENERIC_NOUNS = ("one", "object", "shape", "thing")
FLAVOURS = ("refcoco", "refcoco+", "refcocog")

# Words that must never appear in a RefCOCO+-flavour expression.
POSITION_WORDS = frozenset(
    "left right top bottom middle center centre upper lower above below under beneath over "
    "leftmost rightmost topmost highest lowest bottommost side corner near next behind front".split()
)

MARGIN = 0.06  # how far the target is inside a region / ahead of the runner-up / past the anchor
SLACK = 0.04  # how far every other candidate is outside it
SPACING = 0.025  # gap between the bounding circles of two objects
EXTENT = 1.1  # every shape fits in a circle of EXTENT * radius

REGION_H = {"left": (0.0, 1 / 3), "right": (2 / 3, 1.0)}
REGION_V = {"top": (0.0, 1 / 3), "bottom": (2 / 3, 1.0)}
MIDDLE = (1 / 3, 2 / 3)
SUPERLATIVES = {  # word -> (axis, sign): the target minimises sign * coordinate
    "leftmost": (0, 1),
    "rightmost": (0, -1),
    "topmost": (1, 1),
    "highest": (1, 1),
    "lowest": (1, -1),
    "bottommost": (1, -1),
}
RELATIONS = {  # relation -> (axis, sign, phrases): holds when sign * (target - anchor) > 0
    "left": (0, -1, ("to the left of", "left of", "on the left side of")),
    "right": (0, 1, ("to the right of", "right of", "on the right side of")),
    "above": (1, -1, ("above", "over")),
    "below": (1, 1, ("below", "under", "beneath")),
}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, normalised
    y: float
    r: float  # radius, normalised
    tint: tuple[int, int, int] = (0, 0, 0)  # colour jitter for the renderer


@dataclass
class Background:
    kind: str  # "noise" | "stripes" | "both"
    base: tuple[int, int, int]
    amplitude: float
    stripe_freq: float
    stripe_angle: float
    stripe_phase: float
    seed: int  # for the noise field and the pixel noise


@dataclass(frozen=True)
class Descriptor:
    size: str | None
    colour: str | None
    shape: str | None

    def fits(self, o: SceneObject) -> bool:
        return (
            (self.size is None or self.size == o.size)
            and (self.colour is None or self.colour == o.colour)
            and (self.shape is None or self.shape == o.shape)
        )


@dataclass(frozen=True)
class Expr:
    """An expression's structure; `realise` turns it into words."""

    kind: str  # "plain" | "region" | "superlative" | "relation"
    target: Descriptor
    region: tuple[str | None, str | None] = (None, None)  # (left|right|middle, top|bottom|middle)
    superlative: str | None = None
    relation: str | None = None
    anchors: tuple[Descriptor, ...] = ()  # relation: descriptors that each fit the anchor alone (one is used)


@dataclass
class SynthRef:
    """One referent of a scene: its object index and its sentences (text, exists)."""

    object_index: int
    sentences: list[tuple[str, bool]]


@dataclass
class Scene:
    objects: list[SceneObject]
    background: Background
    refs: list[SynthRef] = field(default_factory=list)


def _descriptors(o: SceneObject) -> list[Descriptor]:
    return _descriptors_of(o.size, o.colour, o.shape)


@cache
def _descriptors_of(size_: str, colour_: str, shape_: str) -> list[Descriptor]:
    out = []
    for size in (None, size_):
        for colour in (None, colour_):
            for shape in (None, shape_):
                if colour is not None or shape is not None:
                    out.append(Descriptor(size, colour, shape))
    return out


def _region_ranges(region: tuple[str | None, str | None]) -> list[tuple[int, float, float]]:
    h, v = region
    out = []
    if h is not None:
        out.append((0, *(MIDDLE if h == "middle" else REGION_H[h])))
    if v is not None:
        out.append((1, *(MIDDLE if v == "middle" else REGION_V[v])))
    return out


def _in_region(o: SceneObject, region, pad: float) -> bool:
    coords = (o.x, o.y)
    for axis, lo, hi in _region_ranges(region):
        lo_pad = pad if lo > 0 else -1.0  # image borders need no margin
        hi_pad = pad if hi < 1 else -1.0
        if not (lo + lo_pad <= coords[axis] <= hi - hi_pad):
            return False
    return True


def _regions_of(o: SceneObject) -> list[tuple[str | None, str | None]]:
    """Regions the object is clearly inside (by MARGIN), as usable phrases."""
    out = []
    hs = [h for h in ("left", "right") if _in_region(o, (h, None), MARGIN)]
    vs = [v for v in ("top", "bottom") if _in_region(o, (None, v), MARGIN)]
    out += [(h, None) for h in hs] + [(None, v) for v in vs] + [(h, v) for h in hs for v in vs]
    if _in_region(o, ("middle", "middle"), MARGIN):
        out.append(("middle", "middle"))
    return out


def unique_descriptors(objects: list[SceneObject]) -> list[list[Descriptor]]:
    """For each object, the descriptors that fit it and no other object."""
    return [[d for d in _descriptors(o) if sum(d.fits(p) for p in objects) == 1] for o in objects]


def candidate_exprs(
    objects: list[SceneObject], t: int, flavour: str, unique: list[list[Descriptor]] | None = None
) -> list[Expr]:
    """Every expression structure that picks out exactly object `t` in this flavour (`unique`: the
    scene's `unique_descriptors`, if already computed)."""
    target = objects[t]
    others = [o for i, o in enumerate(objects) if i != t]
    out: list[Expr] = []
    if unique is None:
        unique = unique_descriptors(objects) if flavour == "refcocog" else []
    for d in _descriptors(target):
        rivals = [o for o in others if d.fits(o)]
        if flavour != "refcocog" and not rivals:
            out.append(Expr("plain", d))
        if flavour == "refcoco":
            for region in _regions_of(target):
                if not any(_in_region(o, region, -SLACK) for o in rivals):
                    out.append(Expr("region", d, region=region))
            if rivals:
                for word, (axis, sign) in SUPERLATIVES.items():
                    mine = sign * (target.x, target.y)[axis]
                    best = min(sign * (o.x, o.y)[axis] for o in rivals)
                    if best - mine >= MARGIN:
                        out.append(Expr("superlative", d, superlative=word))
        if flavour == "refcocog":
            for a_index, anchor in enumerate(objects):
                if a_index == t or d.fits(anchor):
                    continue
                anchor_ds = unique[a_index]
                if not anchor_ds:
                    continue
                for rel, (axis, sign, _) in RELATIONS.items():
                    a_c = (anchor.x, anchor.y)[axis]
                    if sign * ((target.x, target.y)[axis] - a_c) < MARGIN:
                        continue
                    if any(sign * ((o.x, o.y)[axis] - a_c) > -SLACK for o in rivals):
                        continue
                    out.append(Expr("relation", d, relation=rel, anchors=tuple(anchor_ds)))
    return out


def negative_exprs(objects: list[SceneObject], flavour: str, rng: np.random.Generator) -> Expr:
    """An expression whose descriptor fits no object of the scene (so it matches none)."""
    colours, shapes = list(COLOURS), list(SHAPES)
    for _ in range(100):
        if rng.random() < 0.6:  # a near miss: change one attribute of an object that is there
            src = _pick(rng, objects)
            if rng.random() < 0.5:
                d = Descriptor(None, _pick(rng, colours), src.shape)
            else:
                d = Descriptor(None, src.colour, _pick(rng, shapes))
        else:
            d = Descriptor(
                _pick(rng, list(SIZES)) if rng.random() < 0.3 else None,
                _pick(rng, colours),
                _pick(rng, shapes),
            )
        if not any(d.fits(o) for o in objects):
            break
    else:  # pragma: no cover - 6x6 colour/shape pairs cannot all be present among <= 8 objects
        raise RuntimeError("no absent descriptor found")
    if flavour == "refcoco" and rng.random() < 0.5:
        return Expr("region", d, region=_pick(rng, [("left", None), ("right", None), (None, "top"), (None, "bottom")]))
    if flavour == "refcocog":
        anchors = [ad for ds in unique_descriptors(objects) for ad in ds]
        if anchors:
            rel = _pick(rng, list(RELATIONS))
            return Expr("relation", d, relation=rel, anchors=tuple(anchors))
    return Expr("plain", d)


# -- helpers---------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options):
    return options[int(rng.random() * len(options))]  # rng.random() is much cheaper than rng.integers()
