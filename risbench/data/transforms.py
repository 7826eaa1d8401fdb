"""Input transforms: resize to the model's square input, normalise, and map predictions back.

Decision (as LAVT and CGFormer, which Shared-RIS follows: "480x480 as in CGFormer"): a plain resize to
S x S that does NOT keep the aspect ratio; the image is resized bilinearly, the target mask with nearest
neighbour. No horizontal flip: expressions contain "left" and "right". Pixel mean/std are on the [0, 1]
scale (the encoders' `pixel_mean` / `pixel_std`).

`unmap_prediction` undoes the resize for a prediction at any resolution (e.g. 1/4 of the input), so that
metrics are computed at the original image size; `input_resolution_mask` gives the ground truth at the input
resolution for the LAVT-style metric switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3), bilinear (PIL, as the torchvision Resize used by LAVT)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    return np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))


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

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
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
        resized = _resize_image(image, self.size)
        img = np.empty((3, self.size, self.size), dtype=np.float32)
        for c in range(3):
            np.multiply(resized[:, :, c], self._scale[c], out=img[c])
            img[c] += self._shift[c]
        img = torch.from_numpy(img)
        target = torch.from_numpy((resize_mask(mask, self.size) > 0).astype(np.float32))
        resize = {"mode": "stretch", "orig_size": (h0, w0), "input_size": (self.size, self.size)}
        return img, target, resize


def unmap_prediction(prob: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """A (h, w) float prediction at any resolution -> (H0, W0) at the original image size (bilinear).

    The input was a plain stretch of the whole image, so the inverse is a stretch back to the original size.
    """
    if prob.dim() != 2:
        raise ValueError(f"unmap_prediction expects a (h, w) tensor, got shape {tuple(prob.shape)}")
    h0, w0 = meta["orig_size"]
    mode = meta.get("resize", {}).get("mode", "stretch")
    if mode != "stretch":
        raise ValueError(f"unknown resize mode '{mode}'")
    if tuple(prob.shape) == (h0, w0):
        return prob
    return F.interpolate(prob[None, None].float(), size=(h0, w0), mode="bilinear", align_corners=False)[0, 0]


def input_resolution_mask(meta: dict[str, Any], size: int | tuple[int, int]) -> np.ndarray:
    """The ground truth at the input resolution (nearest), for the LAVT-style `input` metric resolution."""
    return resize_mask(meta["orig_mask"], size)
