"""`predict`: one image + one expression -> the mask overlaid on the image (risbench predict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from risbench.data.transforms import ResizeNormalize, unmap_prediction
from risbench.errors import RisbenchError
from risbench.train.api import load_run
from risbench.train.distributed import DistInfo


@torch.no_grad()
def predict(
    run_dir: str | Path,
    image_path: str | Path,
    expression: str,
    out_path: str | Path,
    *,
    threshold: float | None = None,
    checkpoint: str = "auto",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Segment `expression` in one image with a trained run; save the mask overlaid on the image."""
    import numpy as np
    from PIL import Image

    cfg, _, comp, used = load_run(run_dir, checkpoint, DistInfo(), overrides)
    threshold = cfg.eval.threshold if threshold is None else threshold
    image_path = Path(image_path)
    if not image_path.is_file():
        raise RisbenchError(f"image not found: {image_path}")
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    enc = comp.model.encoder
    transform = ResizeNormalize(comp.image_size, enc.pixel_mean, enc.pixel_std, getattr(enc, "input_resize", "stretch"))
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
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay.clip(0, 255).astype(np.uint8)).save(out_path)
    return {
        "out": str(out_path),
        "checkpoint": used,
        "threshold": threshold,
        "mask_fraction": float(mask.mean()),
        "image_size": list(rgb.shape[:2]),
    }
