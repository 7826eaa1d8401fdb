"""Input transforms: resize to the model's square input, normalise, and map predictions back.

Decision (as LAVT and CGFormer, which Shared-RIS follows: "480x480 as in CGFormer"): a plain resize to
S x S that does NOT keep the aspect ratio; the image is resized bilinearly, the target mask with nearest
neighbour. No horizontal flip: expressions contain "left" and "right". Pixel mean/std are on the [0, 1]
scale (the encoders' `pixel_mean` / `pixel_std`).

`resize="letterbox"` (CRIS / DETRIS, the encoder's `input_resize`): the long side is resized to S keeping the
aspect ratio and the image is centred on an S x S canvas filled with the mean colour (0 after normalising), the
mask padded with 0. CRIS's affine warp keeps the fractional scale and offset; here the content is resized to
whole pixels, round(H0 * s) x round(W0 * s), at the integer offset floor((S - h) / 2) (at most half a pixel off).

`resize="pad"` (SAM's preprocessing, which RISAM uses): the long side is resized to S keeping the aspect ratio
(new side = int(side * S / long + 0.5), SAM's ResizeLongestSide rounding) and the normalised image is padded
with zeros at the bottom and right (the mask with 0): a letterbox whose box sits at the top-left corner.

`unmap_prediction` undoes the resize for a prediction at any resolution (e.g. 1/4 of the input), so that
metrics are computed at the original image size (letterbox and pad: up to S x S, crop the content, resize
to H0 x W0, all bilinear: SAM's postprocessing for pad); `input_resolution_mask` gives the ground truth at
the input resolution for the LAVT-style metric switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_MODES = ("stretch", "letterbox", "pad")
BOXED_MODES = ("letterbox", "pad")  # the content sits in a box of the S x S input


def _resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3) or (h, w, 3), bilinear (PIL, as the torchvision Resize of LAVT)."""
    h, w = (size, size) if isinstance(size, int) else size
    if image.shape[0] == h and image.shape[1] == w:
        return image
    from PIL import Image

    return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def letterbox_box(orig_size: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an (H0, W0) image letterboxed into size x size: long side = size, centred."""
    h0, w0 = orig_size
    scale = size / max(h0, w0)
    h, w = max(1, min(size, round(h0 * scale))), max(1, min(size, round(w0 * scale)))
    return (size - h) // 2, (size - w) // 2, h, w


def pad_box(orig_size: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """(0, 0, h, w) of an (H0, W0) image resized long side = size and padded bottom/right (SAM)."""
    h0, w0 = orig_size
    scale = size / max(h0, w0)
    return 0, 0, max(1, min(size, int(h0 * scale + 0.5))), max(1, min(size, int(w0 * scale + 0.5)))


def content_box(mode: str, orig_size: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the image content inside the size x size input, for a boxed mode."""
    return pad_box(orig_size, size) if mode == "pad" else letterbox_box(orig_size, size)


def letterbox_mask(mask: np.ndarray, size: int, mode: str = "letterbox") -> np.ndarray:
    """A (H0, W0) mask boxed into (size, size) as `mode` places it: nearest resize of the content, zero padding."""
    top, left, h, w = content_box(mode, mask.shape, size)
    out = np.zeros((size, size), dtype=mask.dtype)
    out[top : top + h, left : left + w] = resize_mask(mask, (h, w))
    return out


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) mask to (size, size) or (h, w), sampling at pixel centres."""
    h, w = (size, size) if isinstance(size, int) else size
    if mask.shape == (h, w):
        return mask
    rows = np.minimum(((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


class ResizeNormalize:
    """uint8 image (H0, W0, 3) + uint8 mask (H0, W0) -> normalised (3, S, S) float image, (S, S) {0,1} mask."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], resize: str = "stretch") -> None:
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got '{resize}'")
        self.resize = resize
        self.size = int(size)
        self.mean = np.asarray([float(m) for m in mean], dtype=np.float32)
        self.std = np.asarray([float(s) for s in std], dtype=np.float32)
        # Fold /255, -mean and /std into one multiply-add (numpy: single-threaded, fast for one image).
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = -self.mean / self.std

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        h0, w0 = mask.shape
        if image.shape[:2] != (h0, w0):
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
        s = self.size
        if self.resize in BOXED_MODES:
            top, left, h, w = content_box(self.resize, (h0, w0), s)
            img = np.zeros((3, s, s), dtype=np.float32)  # the mean colour, normalised
            content = _resize_image(image, (h, w))
            for c in range(3):
                np.multiply(content[:, :, c], self._scale[c], out=img[c, top : top + h, left : left + w])
                img[c, top : top + h, left : left + w] += self._shift[c]
            target = letterbox_mask(mask, s, self.resize)
            resize = {"mode": self.resize, "orig_size": (h0, w0), "input_size": (s, s), "box": (top, left, h, w)}
        else:
            resized = _resize_image(image, s)
            img = np.empty((3, s, s), dtype=np.float32)
            for c in range(3):
                np.multiply(resized[:, :, c], self._scale[c], out=img[c])
                img[c] += self._shift[c]
            target = resize_mask(mask, s)
            resize = {"mode": "stretch", "orig_size": (h0, w0), "input_size": (s, s)}
        return torch.from_numpy(img), torch.from_numpy((target > 0).astype(np.float32)), resize


def unmap_prediction(prob: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """A (h, w) float prediction at any resolution -> (H0, W0) at the original image size (bilinear).

    Stretch: a stretch back to the original size. Letterbox and pad: the prediction is brought to the input
    size, the content box cropped and stretched to the original size (the inverse of the box).
    """
    if prob.dim() != 2:
        raise ValueError(f"unmap_prediction expects a (h, w) tensor, got shape {tuple(prob.shape)}")
    h0, w0 = meta["orig_size"]
    resize = meta.get("resize", {})
    mode = resize.get("mode", "stretch")
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode '{mode}'")
    if mode in BOXED_MODES:
        size = tuple(resize["input_size"])
        top, left, h, w = resize["box"]
        if tuple(prob.shape) != size:
            prob = _bilinear(prob, size)
        prob = prob[top : top + h, left : left + w]
    if tuple(prob.shape) == (h0, w0):
        return prob
    return _bilinear(prob, (h0, w0))


def _bilinear(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(prob[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


def input_resolution_mask(meta: dict[str, Any], size: int | tuple[int, int]) -> np.ndarray:
    """The ground truth at the input resolution (nearest), for the LAVT-style `input` metric resolution
    (letterbox / pad: boxed into the input square as the image was)."""
    resize = meta.get("resize", {})
    if resize.get("mode") in BOXED_MODES:
        side = size if isinstance(size, int) else size[0]
        return letterbox_mask(np.asarray(meta["orig_mask"]), side, resize["mode"])
    return resize_mask(meta["orig_mask"], size)
