"""risbench: reproducible comparisons of fusion strategies for referring image segmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from risbench.models.segmenter import Segmenter


def build_model(preset_or_spec: Any = "shared-ris-b", overrides: list[str] | None = None, **sections: Any) -> Segmenter:
    """Build a Segmenter from a preset name (registry/models/), a YAML path or a spec dict."""
    from risbench.models.segmenter import build_model as _build

    return _build(preset_or_spec, overrides, **sections)
