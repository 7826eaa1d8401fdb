"""The `predict` overlay: a colour that contrasts with the object, an outline of known width, upscaling of
small images, the input beside the result with the expression under them."""

from __future__ import annotations

import numpy as np

from risbench.train import overlay


def scene(colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """40x40 grey image with a 10x10 square of `colour` at (15..24, 15..24), and its mask."""
    rgb = np.full((40, 40, 3), 128, dtype=np.uint8)
    mask = np.zeros((40, 40), dtype=bool)
    mask[15:25, 15:25] = True
    rgb[mask] = colour
    return rgb, mask


def test_colour_contrasts_with_the_object_under_the_mask() -> None:
    assert overlay.contrast_colour(*scene((255, 0, 0))) == (0, 255, 255)  # red object: cyan, not red
    assert overlay.contrast_colour(*scene((0, 255, 255))) == (255, 64, 0)  # cyan object: orange-red
    rgb, mask = scene((255, 0, 0))
    assert overlay.contrast_colour(rgb, np.zeros_like(mask)) in overlay.CANDIDATES  # empty mask: whole image


def test_outline_is_a_band_across_the_boundary() -> None:
    _, mask = scene((255, 0, 0))
    band = overlay.outline(mask, 2)
    assert band.sum() == 12 * 12 - 8 * 8  # one pixel outside (12x12 dilation) minus the 8x8 erosion
    assert band[14, 20] and band[15, 20] and not band[16, 20] and not band[13, 20] and not band[20, 20]


def test_draw_mask_outlines_in_the_contrasting_colour() -> None:
    rgb, mask = scene((255, 0, 0))
    out = overlay.draw_mask(rgb, mask)
    assert tuple(out[15, 20]) == (0, 255, 255)  # the outline
    assert tuple(out[0, 0]) == (128, 128, 128)  # far away: untouched
    assert out[20, 20, 1] > 0 and out[20, 20, 0] < 255  # the fill: red tinted towards cyan


def test_small_images_are_upscaled_and_shown_beside_the_input() -> None:
    assert overlay.scale_factor((128, 128)) == 3 and overlay.scale_factor((480, 640)) == 1
    rgb, mask = scene((255, 0, 0))
    fig = overlay.prediction_figure(rgb, mask, "the red square on the left of the grey one", existence=0.87)
    factor = overlay.scale_factor((40, 40))
    assert factor == 10 and fig.width == 2 * 400 + 3 * 8 and fig.height > 400
    pixels = np.asarray(fig)
    assert (pixels[8 : 8 + 400, 8 : 8 + 400] == overlay.upscale(rgb, mask, factor)[0]).all()  # the input, left
    assert (pixels[8 + 150, 416 + 200] == (0, 255, 255)).all()  # the outline on the right, at 10x
