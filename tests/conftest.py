"""Shared fakes: encoder features of each encoder kind (no encoder run), and small builders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from risbench.models.interfaces import FPN, Decoder, EncoderFeatures, FeatureSpec
from risbench.registry import DECODERS, FPNS

B, L = 2, 6  # batch, text length (sample 1 has 2 padded positions)
# `--set` overrides that shrink shared-ris-tiny to a model one test step runs in milliseconds
SMALL = [
    "encoder.image_size=32",
    "encoder.embed_dim=32",
    "encoder.num_heads=2",
    "encoder.depth=2",
    "encoder.out_indices=[1,2]",
    "fpn.dim=32",
    "fpn.num_heads=2",
    "decoder.num_heads=2",
    "decoder.head.conv_dim=16",
]


@dataclass(frozen=True)
class EncoderKind:
    """A fake encoder output: what one family of encoders gives the FPN (widths, strides, traits, CLS)."""

    name: str
    spec: FeatureSpec
    image_size: int
    has_cls: bool

    def features(self, seed: int = 0, pad: int = 2) -> EncoderFeatures:
        """Random features of this kind; sample 0 has no padding, sample 1 `pad` padded positions."""
        g = torch.Generator().manual_seed(seed)
        mask = torch.zeros(B, L, dtype=torch.bool)
        mask[1, L - pad :] = True
        grids = [self.image_size // s for s in self.spec.visual_strides]
        visual = [torch.randn(B, d, n, n, generator=g) for d, n in zip(self.spec.visual_dims, grids, strict=True)]
        text = [torch.randn(B, L, self.spec.text_dim, generator=g) for _ in visual]
        cls = [torch.randn(B, d, generator=g) for d in self.spec.visual_dims] if self.has_cls else None
        sentence = torch.randn(B, self.spec.sentence_dim, generator=g) if "sentence" in self.spec.traits else None
        return EncoderFeatures(visual, text, mask, cls, sentence)


JOINT = frozenset({"joint_tokens", "single_scale", "visual_cls", "text_tokens"})
PYRAMID = frozenset({"multi_scale", "text_tokens"})
DUAL_VIT = frozenset({"single_scale", "text_tokens", "sentence"})
# One per family of registered encoders; test_contracts checks that every registered encoder is one of them.
ENCODER_KINDS = {
    # BEiT-3: one joint sequence, every stage at one width and one grid, a visual CLS
    "joint": EncoderKind("joint", FeatureSpec((32,) * 3, (16,) * 3, 32, JOINT), 64, True),
    # Swin + BERT: a 4-level pyramid and separate text features
    "pyramid": EncoderKind("pyramid", FeatureSpec((8, 16, 24, 32), (4, 8, 16, 32), 24, PYRAMID), 64, False),
    # a plain ViT tower + a CLIP-like text tower (dual: DINOv2 + CLIP text): one grid, words, a sentence vector
    "dual_vit": EncoderKind("dual_vit", FeatureSpec((32,) * 3, (16,) * 3, 24, DUAL_VIT, sentence_dim=20), 64, False),
}


def with_extra_padding(feats: EncoderFeatures, extra: int = 3) -> EncoderFeatures:
    """`extra` more padded positions holding large garbage: a padding-invariant module must not notice."""
    g = torch.Generator().manual_seed(7)
    text = [torch.cat([t, 100 * torch.randn(B, extra, t.shape[-1], generator=g)], 1) for t in feats.text]
    mask = torch.cat([feats.text_pad_mask, torch.ones(B, extra, dtype=torch.bool)], 1)
    return EncoderFeatures(feats.visual, text, mask, feats.visual_cls, feats.sentence)


def build_tiny(fpn: str, decoder: str, kind: EncoderKind, **overrides: Any) -> tuple[FPN, Decoder]:
    """An FPN and a decoder, each with its own `tiny_options` (plus `overrides`), on an encoder of `kind`."""
    torch.manual_seed(0)
    fpn_cls = FPNS.get(fpn).obj
    fpn_mod = fpn_cls(FPNS.make_config(fpn, dict(fpn_cls.tiny_options), "fpn"), kind.spec)
    dec_cls = DECODERS.get(decoder).obj
    dec_cfg = DECODERS.make_config(decoder, {**dec_cls.tiny_options, **overrides}, "decoder")
    return fpn_mod, dec_cls(dec_cfg, fpn_mod.out_spec, kind.spec)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny finished run (2 steps; tests/test_train.py's model and data) to evaluate, predict with and
    corrupt copies of (do not change its folder)."""
    import torch
    from test_train import tiny_config

    from risbench.train.api import train_run

    tmp = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(tiny_config(tmp, max_steps=2, val_every=None), tmp / "run", quiet=True)
    finally:
        torch.set_num_threads(threads)
    return tmp / "run"


@pytest.fixture(scope="session", autouse=True)
def peak_cache_in_tmp(tmp_path_factory):
    """`risbench bench` caches the device's GEMM peak in the user's cache folder; the tests keep theirs in tmp."""
    before = os.environ.get("RISBENCH_PEAK_CACHE")
    os.environ["RISBENCH_PEAK_CACHE"] = str(tmp_path_factory.mktemp("peak") / "peak.json")
    yield
    if before is None:
        os.environ.pop("RISBENCH_PEAK_CACHE", None)
    else:
        os.environ["RISBENCH_PEAK_CACHE"] = before


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: two OpenMP threads spin on a busy 2-core machine
    (measured 60x slower under load). Results are the same either way. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
