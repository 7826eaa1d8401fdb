"""The Shared FPN and Shared decoder: parameter calibration against the paper, padding, gradients."""

from __future__ import annotations

import pytest
import torch

from risbench.config import to_dataclass
from risbench.errors import IncompatibleError
from risbench.models.decoders.shared import NoFusionDecoder, NoFusionDecoderConfig, SharedDecoder, SharedDecoderConfig
from risbench.models.fpn.shared import NoFPN, NoFPNConfig, SharedFPN, SharedFPNConfig
from risbench.models.interfaces import EncoderFeatures, FeatureSpec
from risbench.models.layers import count_params

JOINT = frozenset({"joint_tokens", "single_scale", "visual_cls", "text_tokens"})


def spec(d: int, k: int) -> FeatureSpec:
    return FeatureSpec((d,) * k, (16,) * k, d, JOINT)


def features(d: int, k: int, b: int = 2, grid: int = 4, text_len: int = 6, pad: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pad_mask = torch.zeros(b, text_len, dtype=torch.bool)
    pad_mask[:, text_len - pad :] = True
    return EncoderFeatures(
        visual=[torch.randn(b, d, grid, grid, generator=g) for _ in range(k)],
        text=[torch.randn(b, text_len, d, generator=g) for _ in range(k)],
        text_pad_mask=pad_mask,
        visual_cls=[torch.randn(b, d, generator=g) for _ in range(k)],
    )


@pytest.mark.parametrize(("k", "paper_m"), [(2, 4), (3, 6), (4, 8)])
def test_shared_fpn_params_match_paper_table_vii_a(k, paper_m):
    """Table VII(a): 4M / 6M / 8M for 2 / 3 / 4 stages (BEiT-3 base, d_w 512); tolerance max(1M, 10%)."""
    fpn = SharedFPN(SharedFPNConfig(), spec(768, k))
    params_m = count_params(fpn) / 1e6
    assert abs(params_m - paper_m) <= max(1.0, 0.1 * paper_m), params_m


@pytest.mark.parametrize(("layers", "paper_m"), [(0, 5), (1, 9), (2, 12), (3, 15)])
def test_shared_decoder_params_match_paper_table_viii_a(layers, paper_m):
    fused_spec = SharedFPN(SharedFPNConfig(), spec(768, 4)).out_spec
    dec = SharedDecoder(SharedDecoderConfig(num_layers=layers), fused_spec, spec(768, 4))
    params_m = count_params(dec) / 1e6
    assert abs(params_m - paper_m) <= max(1.0, 0.1 * paper_m), params_m


def small_pipeline(fpn_cls=SharedFPN, fpn_cfg=None, dec_layers: int = 1):
    torch.manual_seed(0)
    enc_spec = spec(32, 3)
    fpn = fpn_cls(fpn_cfg or SharedFPNConfig(dim=16, num_heads=2), enc_spec)
    dec_cfg = to_dataclass(
        SharedDecoderConfig, {"num_layers": dec_layers, "num_heads": 2, "head": {"conv_dim": 8}}, "d"
    )
    dec = SharedDecoder(dec_cfg, fpn.out_spec, enc_spec)
    return fpn.eval(), dec.eval()


def test_output_shape_is_quarter_of_input():
    fpn, dec = small_pipeline()
    feats = features(32, 3, grid=4)
    out = dec(fpn(feats), feats)
    assert out.logits.shape == (2, 1, 16, 16)  # grid 4 x 2 upsamplings x2


def test_padding_is_masked_end_to_end():
    """Extra padded text positions (with arbitrary values) must not change the mask logits."""
    fpn, dec = small_pipeline()
    feats = features(32, 3, text_len=6, pad=2)
    longer = EncoderFeatures(
        visual=feats.visual,
        text=[torch.cat([t, 100 * torch.randn(2, 3, 32)], 1) for t in feats.text],
        text_pad_mask=torch.cat([feats.text_pad_mask, torch.ones(2, 3, dtype=torch.bool)], 1),
        visual_cls=feats.visual_cls,
    )
    with torch.no_grad():
        a = dec(fpn(feats), feats).logits
        b = dec(fpn(longer), longer).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_text_changes_the_mask():
    fpn, dec = small_pipeline()
    feats = features(32, 3, seed=0)
    other = features(32, 3, seed=1)
    swapped = EncoderFeatures(feats.visual, other.text, feats.text_pad_mask, feats.visual_cls)
    with torch.no_grad():
        assert not torch.allclose(dec(fpn(feats), feats).logits, dec(fpn(swapped), swapped).logits)


@pytest.mark.parametrize("fpn_cls", [SharedFPN, NoFPN])
def test_gradients_reach_every_parameter(fpn_cls):
    cfg = SharedFPNConfig(dim=16, num_heads=2) if fpn_cls is SharedFPN else NoFPNConfig(dim=16)
    fpn, dec = small_pipeline(fpn_cls, cfg)
    fpn.train()
    dec.train()
    feats = features(32, 3)
    dec(fpn(feats), feats).logits.square().mean().backward()
    for name, p in [*fpn.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_no_fusion_decoder_has_no_layers():
    enc_spec = spec(32, 2)
    fpn = NoFPN(NoFPNConfig(dim=16), enc_spec)
    dec = NoFusionDecoder(NoFusionDecoderConfig(), fpn.out_spec, enc_spec)
    assert len(dec.layers) == 0


def test_shared_fpn_rejects_mixed_widths():
    mixed = FeatureSpec((128, 256), (4, 8), 768, JOINT)
    with pytest.raises(IncompatibleError, match="fpn 'shared' needs every stage at one width"):
        SharedFPN(SharedFPNConfig(), mixed)
