"""Transforms: stretch resize (image bilinear, mask nearest), normalisation, no flip, mapping back."""

from __future__ import annotations

import numpy as np
import torch

from risbench.data.transforms import ResizeNormalize, input_resolution_mask, resize_mask, unmap_prediction


def _meta(mask, resize):
    return {"orig_mask": mask, "orig_size": mask.shape, "resize": resize}


def test_normalisation_and_shapes():
    t = ResizeNormalize(32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    image = np.zeros((45, 70, 3), dtype=np.uint8)
    image[...] = (200, 100, 50)
    mask = np.zeros((45, 70), dtype=np.uint8)
    img, target, resize = t(image, mask)
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    expected = (np.array([200, 100, 50]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert torch.allclose(img[:, 5, 7], torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    assert target.shape == (32, 32) and target.dtype == torch.float32 and target.sum() == 0
    assert resize == {"mode": "stretch", "orig_size": (45, 70), "input_size": (32, 32)}


def test_stretch_without_flip_and_nearest_mask():
    h0, w0 = 60, 120
    image = np.zeros((h0, w0, 3), dtype=np.uint8)
    image[:, :30] = 255  # bright left quarter
    mask = np.zeros((h0, w0), dtype=np.uint8)
    mask[:, :30] = 1
    img, target, _ = ResizeNormalize(40, (0, 0, 0), (1, 1, 1))(image, mask)
    # the aspect ratio is not kept: the left quarter of the original is the left quarter of the input
    assert target[:, :10].all() and not target[:, 10:].any()
    assert img[0, :, :9].min() > 0.99 and img[0, :, 11:].max() < 0.01
    assert set(np.unique(target.numpy())) == {0.0, 1.0}
    assert np.array_equal(input_resolution_mask(_meta(mask, {}), 40), target.numpy().astype(np.uint8))


def test_unmap_prediction_back_to_original_size():
    h0, w0 = 75, 130
    mask = np.zeros((h0, w0), dtype=np.uint8)
    mask[10:60, 20:100] = 1
    t = ResizeNormalize(64, (0.5,) * 3, (0.5,) * 3)
    _, target, resize = t(np.zeros((h0, w0, 3), dtype=np.uint8), mask)
    meta = _meta(mask, resize)
    # a perfect prediction at the input resolution, and at 1/4 of it (coarser: the boundary moves a little)
    for size, min_iou in ((64, 0.95), (16, 0.85)):
        pred_small = torch.from_numpy(resize_mask(target.numpy(), size)).float()
        back = unmap_prediction(pred_small, meta)
        assert back.shape == (h0, w0)
        pred = back.numpy() > 0.5
        assert (pred & (mask > 0)).sum() / (pred | (mask > 0)).sum() > min_iou
    assert torch.allclose(unmap_prediction(torch.full((16, 16), 0.3), meta), torch.full((h0, w0), 0.3))
    same = torch.rand(h0, w0)
    assert unmap_prediction(same, meta) is same
