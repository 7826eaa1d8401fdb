"""The README's worked example (a new FPN plugged in by a decorator) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from risbench.registry import FPNS

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_component_example_builds_and_runs():
    text = README.read_text()
    block = re.search(r"<!-- example:begin -->\s*```python\n(.*?)```\s*<!-- example:end -->", text, re.S)
    assert block, "README lost its worked example"
    namespace: dict = {}
    try:
        exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own README
        model = namespace["model"].eval()
        assert type(model.fpn).__name__ == "FilmFPN"
        ids = torch.randint(4, 50, (2, 8))
        pad = torch.zeros(2, 8, dtype=torch.bool)
        with torch.no_grad():
            out = model(torch.randn(2, 3, 128, 128), ids, pad)
        assert out.logits.shape[0] == 2 and out.logits.shape[1] == 1
    finally:
        FPNS._entries.pop("film", None)  # keep the global registry as it was
