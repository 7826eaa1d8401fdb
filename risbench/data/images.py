"""Reading image files: a missing, non-image or truncated file is one RisbenchError naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from risbench.errors import RisbenchError

DECODE_ERRORS = (OSError, SyntaxError, ValueError)  # PIL: UnidentifiedImageError is an OSError


def read_rgb(path: Path) -> np.ndarray:
    """An image file, fully decoded, as a uint8 (H, W, 3) array."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise RisbenchError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except DECODE_ERRORS as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RisbenchError(f"{path}: not a readable image ({reason}); replace the file with a PNG or JPEG") from None
