"""`predict`: one image + one expression -> the input beside the outlined mask (risbench predict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from risbench.data.images import read_rgb
from risbench.data.transforms import ResizeNormalize, unmap_prediction
from risbench.io import atomic_write_path, check_writable
from risbench.train.distributed import DistInfo
from risbench.train.overlay import prediction_figure
from risbench.train.reeval import load_run


@torch.no_grad()
def segment(comp: Any, cfg: Any, rgb: Any, expression: str) -> tuple[Any, Any]:
    """(foreground probability at the image's own resolution (H, W) numpy, the model's DecoderOutput) of
    `expression` in the RGB array `rgb`, with a loaded run's components (risbench.train.reeval.load_run)."""
    import numpy as np

    enc = comp.model.encoder
    transform = ResizeNormalize(comp.image_size, enc.pixel_mean, enc.pixel_std, enc.input_resize)
    img, _, resize = transform(rgb, np.zeros(rgb.shape[:2], dtype=np.uint8))
    ids, pad = comp.tokenizer.encode([expression], cfg.tokenizer.max_len)
    dev = next(comp.model.parameters()).device
    out = comp.model(img[None].to(dev), ids.to(dev), pad.to(dev))
    prob = torch.sigmoid(out.logits.float())[0, 0].cpu()
    return unmap_prediction(prob, {"orig_size": rgb.shape[:2], "resize": resize}).numpy(), out


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
    """Segment `expression` in one image with a trained run; save the input beside the outlined mask, the
    expression (and the existence score, when the decoder has one) under them (risbench.train.overlay)."""
    from PIL import Image

    rgb = read_rgb(Path(image_path))  # before the model is loaded: a bad image fails at once
    out_path = Path(out_path)
    check_writable(out_path.parent, "--out folder")
    cfg, _, comp, used = load_run(run_dir, checkpoint, DistInfo(), overrides)
    threshold = cfg.eval.threshold if threshold is None else threshold
    prob, out = segment(comp, cfg, rgb, expression)
    mask = prob > threshold
    existence = None if out.exist_logits is None else float(torch.sigmoid(out.exist_logits.float())[0])
    figure = prediction_figure(rgb, mask, expression, existence=existence)
    fmt = Image.registered_extensions().get(out_path.suffix.lower(), "PNG")
    atomic_write_path(out_path, lambda tmp: figure.save(tmp, format=fmt))
    return {
        "out": str(out_path),
        "checkpoint": used,
        "threshold": threshold,
        "mask_fraction": float(mask.mean()),
        "image_size": list(rgb.shape[:2]),
        "existence": existence,
        "figure_size": [figure.height, figure.width],
    }
