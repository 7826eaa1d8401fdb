"""`predict`: one image + one expression -> the mask overlaid on the image (risbench predict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from risbench.data.images import read_rgb
from risbench.data.transforms import ResizeNormalize, unmap_prediction
from risbench.io import atomic_write_path, check_writable
from risbench.train.distributed import DistInfo
from risbench.train.reeval import load_run


@torch.no_grad()
def predict(
    run_dir: str | Path,
    image_path: str | Path,
    expression: str,
    out_path: str | Path,
    *,
    threshold: float | None = None,
    checkpoint: str = "auto",
) -> dict[str, Any]:
    """Segment `expression` in one image with a trained run; save the mask overlaid on the image."""
    import numpy as np
    from PIL import Image

    rgb = read_rgb(Path(image_path))  # before the model is loaded: a bad image fails at once
    out_path = Path(out_path)
    check_writable(out_path.parent, "--out folder")
    cfg, _, comp, used = load_run(run_dir, checkpoint, DistInfo())
    threshold = cfg.eval.threshold if threshold is None else threshold
    enc = comp.model.encoder
    transform = ResizeNormalize(comp.image_size, enc.pixel_mean, enc.pixel_std)
    img, _, resize = transform(rgb, np.zeros(rgb.shape[:2], dtype=np.uint8))
    ids, pad = comp.tokenizer.encode([expression], cfg.tokenizer.max_len)
    dev = next(comp.model.parameters()).device
    out = comp.model(img[None].to(dev), ids.to(dev), pad.to(dev))
    prob = torch.sigmoid(out.logits.float())[0, 0].cpu()
    meta = {"orig_size": rgb.shape[:2], "resize": resize}
    mask = (unmap_prediction(prob, meta) > threshold).numpy()
    overlay = rgb.astype(np.float32).copy()
    colour = np.array([255.0, 40.0, 40.0])
    overlay[mask] = 0.45 * overlay[mask] + 0.55 * colour
    atomic_write_path(out_path, lambda tmp: Image.fromarray(overlay.clip(0, 255).astype(np.uint8)).save(tmp, "PNG"))
    return {
        "out": str(out_path),
        "checkpoint": used,
        "threshold": threshold,
        "mask_fraction": float(mask.mean()),
        "image_size": list(rgb.shape[:2]),
    }
