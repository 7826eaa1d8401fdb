"""A new FPN file dropped into risbench/models/fpn/ (of a copy of the package) is picked up by the contract
tests, with no edit to any test: their parametrisation comes from the registry."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from risbench.config import PROJECT_ROOT
from risbench.registry import DECODERS

DROPIN = '''"""A FiLM FPN dropped in by tests/test_contracts_dropin.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from risbench.models.interfaces import FPN, EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec
from risbench.registry import FPNS


@dataclass
class DropinFilmConfig:
    """Options of the dropped-in FPN."""

    dim: int = 512


@FPNS.register("dropin_film", config=DropinFilmConfig)
class DropinFilm(FPN):
    """The text CLS scales and shifts the last visual stage."""

    requires = frozenset({"text_tokens"})
    tiny_options: ClassVar[dict[str, Any]] = {"dim": 16}

    def __init__(self, cfg: DropinFilmConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        self.visual = nn.Conv2d(in_spec.visual_dims[-1], cfg.dim, 1)
        self.text = nn.Linear(in_spec.text_dim, cfg.dim)
        self.film = nn.Linear(in_spec.text_dim, 2 * cfg.dim)
        self.out_spec = FusedSpec(cfg.dim, in_spec.visual_strides[-1], frozenset({"text_tokens"}))

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        text = feats.text[-1]
        scale, shift = self.film(text[:, 0]).chunk(2, dim=-1)
        visual = self.visual(feats.visual[-1]) * (1 + scale[..., None, None]) + shift[..., None, None]
        return FusedFeatures(visual, self.text(text), feats.text_pad_mask)
'''


def test_a_dropped_in_fpn_is_built_by_the_contract_tests(tmp_path: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PROJECT_ROOT / "risbench", tmp_path / "risbench", ignore=ignore)
    (tmp_path / "tests").mkdir()
    for name in ("conftest.py", "test_contracts.py"):  # copied as they are
        shutil.copy(PROJECT_ROOT / "tests" / name, tmp_path / "tests" / name)
    fpn_dir = tmp_path / "risbench" / "models" / "fpn"
    (fpn_dir / "dropin_film.py").write_text(DROPIN)
    init = fpn_dir / "__init__.py"
    init.write_text(init.read_text() + "from risbench.models.fpn import dropin_film  # noqa: E402, F401\n")

    # cwd = the copy, so that `risbench` is the copy's package
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_contracts.py"]
    out = subprocess.run([*cmd, "-k", "dropin_film"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    passed = {line.split("[", 1)[1].rstrip("]") for line in out.stdout.splitlines() if line.startswith("PASSED")}
    # the film FPN gives text_tokens: every built-in decoder that needs no more (RefSegformer's read a pyramid)
    decoders = [d for d in DECODERS.names() if DECODERS.get(d).obj.requires <= {"text_tokens"}]
    assert len(decoders) >= 8
    assert {f"joint-dropin_film-{d}" for d in decoders} <= passed, out.stdout[-3000:]
    assert {f"pyramid-dropin_film-{d}" for d in decoders} <= passed, out.stdout[-3000:]
