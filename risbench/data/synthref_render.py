"""A numpy rasteriser for SynthRef scenes: textured background + flat-coloured shapes, with the label map.

Pixels are sampled at their centres; a shape's mask is exactly the set of pixel centres inside it, so the
instance masks follow from the scene description alone. Objects never overlap (their bounding circles of
EXTENT * r are kept apart when the scene is made), so each object's mask is its whole shape.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from risbench.data.synthref_scene import COLOURS, Background, Scene, SceneObject

NOISE_GRID = 6  # the background noise field is a bilinear upsampling of a NOISE_GRID^2 random grid
PIXEL_NOISE = 6  # pixel noise in [-PIXEL_NOISE, PIXEL_NOISE], a window of a fixed tile at a per-scene offset


def _regular_polygon(n: int, radius: float, start: float = -np.pi / 2) -> np.ndarray:
    a = start + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], 1) * radius


def _star(outer: float, inner: float) -> np.ndarray:
    a = -np.pi / 2 + np.pi * np.arange(10) / 5
    rad = np.where(np.arange(10) % 2 == 0, outer, inner)
    return np.stack([np.cos(a) * rad, np.sin(a) * rad], 1)


# Polygons in units of the object radius (y down; the triangle points up).
_POLYGONS = {"triangle": _regular_polygon(3, 1.08), "star": _star(1.08, 0.46)}
_STAR_OUTER, _STAR_INNER = 1.08, 0.46


def _inside_star(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The 5-point star of _POLYGONS, by symmetry: fold the angle into one 36-degree wedge between an outer tip
    (at angle 0) and an inner corner, then test against the edge joining them. Same set as the even-odd test."""
    angle = np.arctan2(dx, -dy)  # 0 at the top tip, clockwise on screen
    folded = np.abs(np.mod(angle + np.pi / 5, 2 * np.pi / 5) - np.pi / 5)
    rho = np.hypot(dx, dy)
    u, v = rho * np.cos(folded), rho * np.sin(folded)
    # edge from tip (R, 0) to inner corner (r cos 36, r sin 36); inside when on the origin's side
    tx, ty = _STAR_INNER * np.cos(np.pi / 5) - _STAR_OUTER, _STAR_INNER * np.sin(np.pi / 5)
    return (u - _STAR_OUTER) * ty - v * tx <= 0


def _inside_polygon(dx: np.ndarray, dy: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd rule for points (dx (1, w), dy (h, 1)) against a closed polygon."""
    inside = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), dtype=bool)
    x1, y1 = verts[-1]
    for x2, y2 in verts:
        if y1 != y2:
            crosses = (y1 > dy) != (y2 > dy)
            x_at = x1 + (dy - y1) * ((x2 - x1) / (y2 - y1))
            inside ^= crosses & (dx < x_at)
        x1, y1 = x2, y2
    return inside


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Which points at offsets (dx, dy) from the centre lie inside `shape` of radius r (all normalised)."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = 0.76 * r
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.08 * r
    if shape == "cross":
        a, b = 0.33 * r, 1.03 * r
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= a) & (ay <= b)) | ((ay <= a) & (ax <= b))
    if shape == "star":
        return _inside_star(dx / r, dy / r)
    if shape in _POLYGONS:
        return _inside_polygon(dx / r, dy / r, _POLYGONS[shape])
    raise ValueError(f"unknown shape '{shape}'")


def object_mask(o: SceneObject, size: int) -> tuple[slice, slice, np.ndarray]:
    """(rows, cols, mask) of the object's bounding box at `size` px."""
    ext = 1.15 * o.r
    r0, r1 = max(int(np.floor((o.y - ext) * size)), 0), min(int(np.ceil((o.y + ext) * size)), size)
    c0, c1 = max(int(np.floor((o.x - ext) * size)), 0), min(int(np.ceil((o.x + ext) * size)), size)
    dy = ((np.arange(r0, r1) + 0.5) / size - o.y)[:, None]
    dx = ((np.arange(c0, c1) + 0.5) / size - o.x)[None, :]
    return slice(r0, r1), slice(c0, c1), shape_mask(o.shape, dx, dy, o.r)


@lru_cache(maxsize=8)
def _noise_tile(size: int) -> np.ndarray:
    rng = np.random.default_rng(20240611)
    return rng.integers(-PIXEL_NOISE, PIXEL_NOISE + 1, size=(2 * size, 2 * size)).astype(np.float32)


@lru_cache(maxsize=8)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (normalised) and the bilinear upsampling matrix for the noise grid."""
    t = (np.arange(size) + 0.5) / size
    pos = np.clip(t * (NOISE_GRID - 1), 0, NOISE_GRID - 1)
    lo = np.minimum(pos.astype(int), NOISE_GRID - 2)
    frac = pos - lo
    up = np.zeros((size, NOISE_GRID), dtype=np.float32)
    up[np.arange(size), lo] = 1 - frac
    up[np.arange(size), lo + 1] = frac
    return t.astype(np.float32), up


def render_texture(bg: Background, size: int, rng: np.random.Generator) -> np.ndarray:
    """The background's grey texture (size, size) float32, zero-mean, scaled by its amplitude."""
    t, up = _grids(size)
    tex = np.zeros((size, size), dtype=np.float32)
    if bg.kind in ("noise", "both"):
        grid = rng.uniform(-1, 1, (NOISE_GRID, NOISE_GRID)).astype(np.float32)
        tex += up @ grid @ up.T
    if bg.kind in ("stripes", "both"):
        # sin(a x + b y + p) = sin(a x) cos(b y + p) + cos(a x) sin(b y + p): two outer products, not size^2 sines
        w = np.float32(2 * np.pi * bg.stripe_freq)
        ax = w * np.float32(np.cos(bg.stripe_angle)) * t
        by = w * np.float32(np.sin(bg.stripe_angle)) * t + np.float32(bg.stripe_phase)
        tex += np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax))
    tex *= np.float32(bg.amplitude * (0.6 if bg.kind == "both" else 1.0))
    return tex


def render(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (size, size, 3), labels uint8 (size, size): 0 background, i + 1 for object i)."""
    rng = np.random.default_rng(scene.background.seed)
    tex = render_texture(scene.background, size, rng)
    oy, ox = (int(v) for v in rng.integers(0, size, size=2))
    noise = _noise_tile(size)[oy : oy + size, ox : ox + size]
    tex += noise
    # No clipping needed: base channels lie in [88, 172], |texture| <= 1.2 * 30 and |noise| <= 6, so every
    # background value is in [46, 214]; object colours are kept in [6, 249] before the noise is added.
    img = np.empty((size, size, 3), dtype=np.uint8)
    for c, base in enumerate(scene.background.base):
        np.add(tex, np.float32(base), out=img[:, :, c], casting="unsafe")
    labels = np.zeros((size, size), dtype=np.uint8)
    for i, o in enumerate(scene.objects):
        rows, cols, m = object_mask(o, size)
        colour = [
            min(max(c + t, PIXEL_NOISE), 255 - PIXEL_NOISE) for c, t in zip(COLOURS[o.colour], o.tint, strict=True)
        ]
        img[rows, cols][m] = np.asarray(colour, dtype=np.float32)[None, :] + noise[rows, cols][m][:, None]
        labels[rows, cols][m] = i + 1
    return img, labels
