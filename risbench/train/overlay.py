"""A mask drawn so that anyone can read it: an outline and a light fill in the candidate colour that is
farthest from the image under the mask, a dark halo around the outline, the input beside the result and
the expression (and the existence score, when the model has one) written under both. Small images
(SynthRef's 128 px scenes) are upscaled to a readable size first. numpy and Pillow only."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# candidates for the mask colour: saturated hues that stand apart from one another
CANDIDATES: tuple[tuple[int, int, int], ...] = (
    (255, 0, 255),  # magenta
    (0, 255, 255),  # cyan
    (255, 255, 0),  # yellow
    (0, 255, 0),  # green
    (255, 64, 0),  # orange-red
    (0, 80, 255),  # blue
)
MIN_SIDE = 384  # upscale until the shorter side is at least this (in whole multiples)
FILL_ALPHA = 0.35


def contrast_colour(rgb: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:
    """The candidate farthest (Euclidean, RGB) from the mean colour under `mask` (the whole image when the
    mask is empty)."""
    region = rgb[mask] if mask.any() else rgb.reshape(-1, 3)
    mean = region.reshape(-1, 3).astype(np.float64).mean(axis=0)
    return max(CANDIDATES, key=lambda c: float(np.sum((np.asarray(c, dtype=np.float64) - mean) ** 2)))


def _shift_any(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)² square (numpy only)."""
    out = mask.copy()
    padded = np.pad(mask, radius)
    h, w = mask.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The band of `width` pixels along the mask's boundary, half inside and half outside."""
    mask = mask.astype(bool)
    inner = ~_shift_any(~mask, max(width // 2, 1))  # erosion
    return _shift_any(mask, max(width - width // 2, 1)) & ~inner


def scale_factor(shape: tuple[int, int], min_side: int = MIN_SIDE) -> int:
    """Whole-number upscale that brings the shorter side to at least `min_side` (1 when it already is)."""
    return max(1, math.ceil(min_side / max(min(shape), 1)))


def upscale(rgb: np.ndarray, mask: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask `factor` times larger (nearest neighbour: SynthRef's flat shapes stay crisp)."""
    if factor == 1:
        return rgb, mask
    return np.repeat(np.repeat(rgb, factor, 0), factor, 1), np.repeat(np.repeat(mask, factor, 0), factor, 1)


def draw_mask(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] | None = None) -> np.ndarray:
    """`rgb` with `mask` filled lightly and outlined in `colour` (default: `contrast_colour`), the outline
    edged by a dark halo so that it reads on light and dark backgrounds alike."""
    mask = mask.astype(bool)
    colour = colour or contrast_colour(rgb, mask)
    width = max(2, round(min(mask.shape) / 120))
    out = rgb.astype(np.float32).copy()
    c = np.asarray(colour, dtype=np.float32)
    out[mask] = (1 - FILL_ALPHA) * out[mask] + FILL_ALPHA * c
    band = outline(mask, width)
    out[_shift_any(band, 1) & ~band] = 0.0
    out[band] = c
    return out.clip(0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def side_by_side(panels: list[np.ndarray], captions: list[str], gap: int = 8) -> Image.Image:
    """The panels (same height) in a row on white, the caption lines wrapped under them."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + gap * (len(panels) + 1)
    font = _font(max(14, h // 22))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [ln for text in captions for ln in _wrap(probe, text, font, w - 2 * gap)]
    line_h = int(font.size * 1.35) if hasattr(font, "size") else 16
    canvas = Image.new("RGB", (w, h + 2 * gap + line_h * len(lines) + gap), "white")
    x = gap
    for p in panels:
        canvas.paste(Image.fromarray(p), (x, gap))
        x += p.shape[1] + gap
    draw = ImageDraw.Draw(canvas)
    for i, ln in enumerate(lines):
        draw.text((gap, h + 2 * gap + i * line_h), ln, fill="black", font=font)
    return canvas


def prediction_figure(
    rgb: np.ndarray, mask: np.ndarray, expression: str, *, existence: float | None = None
) -> Image.Image:
    """The input and the outlined prediction side by side, upscaled, with the expression under them."""
    factor = scale_factor(rgb.shape[:2])
    big, big_mask = upscale(rgb, mask.astype(bool), factor)
    caption = [f'"{expression}"']
    detail = f"mask: {100 * mask.mean():.1f}% of the image"
    if existence is not None:
        detail = f"existence score {existence:.2f}; " + detail
    if factor > 1:
        detail += f"; shown {factor}x ({rgb.shape[1]}x{rgb.shape[0]} px input)"
    return side_by_side([big, draw_mask(big, big_mask)], caption + [detail])
