"""The built-in towers that the `dual` encoder composes: vision (DINOv2 with registers, SAM's ViT) and text
(CLIP). A new tower is a new module here, added to this list."""

from risbench.models.towers import clip_text, dinov2, sam_vit  # noqa: F401  (registers them)
