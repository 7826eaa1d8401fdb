"""The built-in towers that the `dual` encoder composes: vision (DINOv2 with registers) and text (CLIP).
A new tower is a new module here, added to this list."""

from risbench.models.towers import clip_text, dinov2  # noqa: F401  (registers them)
