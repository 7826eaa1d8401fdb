"""The fusion-module variants (cross-attention and bi-direction FPNs and decoders, the Grounding DINO block) and
LAVT's PWAM FPN: shapes, gradients, that the text reaches the output, padding invariance, options."""

from __future__ import annotations

import pytest
import torch
from conftest import with_extra_padding

from risbench.errors import RisbenchError
from risbench.models.bi_attention import BiAttentionBlock
from risbench.models.interfaces import EncoderFeatures, FeatureSpec, FusedFeatures
from risbench.models.layers import count_params
from risbench.models.segmenter import build_model
from risbench.registry import DECODERS, FPNS

JOINT = frozenset({"joint_tokens", "single_scale", "visual_cls", "text_tokens"})
B, D, K, GRID, L = 2, 32, 3, 4, 6


def joint_spec(d: int = D, k: int = K) -> FeatureSpec:
    return FeatureSpec((d,) * k, (16,) * k, d, JOINT)


def joint_features(seed: int = 0, pad: int = 2, d: int = D, k: int = K) -> EncoderFeatures:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[1, L - pad :] = True  # sample 1 is padded, sample 0 is not
    return EncoderFeatures(
        visual=[torch.randn(B, d, GRID, GRID, generator=g) for _ in range(k)],
        text=[torch.randn(B, L, d, generator=g) for _ in range(k)],
        text_pad_mask=mask,
        visual_cls=[torch.randn(B, d, generator=g) for _ in range(k)],
    )


def with_other_words(feats: EncoderFeatures, seed: int = 1) -> EncoderFeatures:
    """The same image features and text CLS, different words after it."""
    g = torch.Generator().manual_seed(seed)
    text = [torch.cat([t[:, :1], torch.randn(t[:, 1:].shape, generator=g)], 1) for t in feats.text]
    return EncoderFeatures(feats.visual, text, feats.text_pad_mask, feats.visual_cls)


def build(fpn: tuple[str, dict], dec: tuple[str, dict], spec: FeatureSpec | None = None):
    torch.manual_seed(0)
    spec = spec or joint_spec()
    fpn_mod = FPNS.get(fpn[0]).obj(FPNS.make_config(fpn[0], {"dim": 16, **fpn[1]}, "fpn"), spec)
    dec_cfg = DECODERS.make_config(dec[0], {"head": {"conv_dim": 8}, **dec[1]}, "decoder")
    dec_mod = DECODERS.get(dec[0]).obj(dec_cfg, fpn_mod.out_spec, spec)
    return fpn_mod, dec_mod


NO_DROP = {"drop_path": 0.0}
# (fpn, decoder) pairs: each new module paired with the Shared counterpart
CASES = {
    "fpn_cross_attention": (("cross_attention", {"num_heads": 2}), ("shared", {"num_heads": 2})),
    "fpn_bi_direction": (("bi_direction", {"num_heads": 2, **NO_DROP}), ("shared", {"num_heads": 2})),
    "fpn_bi_direction_bare_block": (
        ("bi_direction", {"num_heads": 2, "mlp_on": "none", **NO_DROP}),
        ("shared", {"num_heads": 2}),
    ),
    "fpn_bi_direction_encoder": (
        ("bi_direction", {"num_heads": 2, "position": "encoder", **NO_DROP}),
        ("shared", {"num_heads": 2}),
    ),
    "fpn_pwam": (("pwam", {}), ("shared", {"num_heads": 2})),
    "fpn_pwam_no_gate": (("pwam", {"gate": False, "stages": [0, 2]}), ("shared", {"num_heads": 2})),
    "fpn_pwam_no_feed_back": (("pwam", {"gate": False, "feed_back": False}), ("shared", {"num_heads": 2})),
    "dec_cross_attention": (("shared", {"num_heads": 2}), ("cross_attention", {"num_heads": 2})),
    "dec_bi_direction": (("shared", {"num_heads": 2}), ("bi_direction", {"num_heads": 2, **NO_DROP})),
    "dec_bi_direction_mlp_visual": (
        ("shared", {"num_heads": 2}),
        ("bi_direction", {"num_heads": 2, "mlp_on": "visual", **NO_DROP}),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_shapes_and_gradients_reach_every_parameter(case):
    fpn, dec = build(*CASES[case])
    feats = joint_features()
    fused = fpn(feats)
    assert fused.visual.shape == (B, 16, GRID, GRID)
    assert fused.text.shape == (B, L, 16)
    out = dec(fused, feats)
    assert out.logits.shape == (B, 1, 4 * GRID, 4 * GRID)
    weights = torch.randn(out.logits.shape, generator=torch.Generator().manual_seed(3))
    (out.logits * weights).sum().backward()
    for part in (fpn, dec):
        for name, p in part.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{case}: no gradient reaches {name}"


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("fpn_")])
def test_fpn_injects_the_words_into_the_visual_map(case):
    """Other words (same image, same text CLS) change the fused visual map: the fusion reads the text."""
    fpn, _ = build(*CASES[case])
    fpn.eval()
    feats = joint_features()
    with torch.no_grad():
        a, b = fpn(feats).visual, fpn(with_other_words(feats)).visual
    assert (a - b).abs().max() > 1e-6


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("dec_")])
def test_decoder_fusion_reads_the_words(case):
    """The FPN output with only the non-CLS words changed: the mask head's text CLS is the same, so a change in
    the logits comes through the decoder's fusion."""
    fpn, dec = build(*CASES[case])
    fpn.eval()
    dec.eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        fused = fpn(joint_features())
        other = torch.cat([fused.text[:, :1], torch.randn(fused.text[:, 1:].shape, generator=g)], 1)
        a = dec(fused, None).logits
        b = dec(FusedFeatures(fused.visual, other, fused.text_pad_mask, fused.visual_cls), None).logits
    assert (a - b).abs().max() > 1e-6


@pytest.mark.parametrize("case", list(CASES))
def test_padding_is_masked(case):
    fpn, dec = build(*CASES[case])
    fpn.eval()
    dec.eval()
    feats = joint_features()
    longer = with_extra_padding(feats)
    with torch.no_grad():
        a = dec(fpn(feats), feats).logits
        b = dec(fpn(longer), longer).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_bi_attention_block_matches_its_definition():
    """The block against a direct evaluation of the Grounding DINO formulas (one head, no padding)."""
    torch.manual_seed(0)
    blk = BiAttentionBlock(8, 6, 12, num_heads=1, init_values=0.5).eval()
    v, t = torch.randn(1, 5, 8), torch.randn(1, 3, 6)
    out_v, out_t = blk(v, t)
    a = blk.attn
    vn, tn = blk.norm_v(v), blk.norm_l(t)
    s = (a.v_proj(vn) * 12**-0.5) @ a.l_proj(tn).transpose(1, 2)
    exp_v = vn + 0.5 * a.out_v_proj(s.softmax(-1) @ a.values_l_proj(tn))
    exp_t = tn + 0.5 * a.out_l_proj(s.transpose(1, 2).softmax(-1) @ a.values_v_proj(vn))
    assert torch.allclose(out_v, exp_v, atol=1e-5) and torch.allclose(out_t, exp_t, atol=1e-5)


def test_paper_scale_parameter_counts():
    """At BEiT-3-B (d 768, 4 stages, d_w 512): cross-attention = Shared in params (paper: 8M and 9M for both);
    the bi-direction FPN's and decoder's default readings are within 1M of the paper's 37M and 14M."""
    spec = joint_spec(768, 4)
    counts = {}
    for kind, reg, name in [("fpn", FPNS, "shared"), ("fpn", FPNS, "cross_attention"), ("fpn", FPNS, "bi_direction")]:
        counts[(kind, name)] = count_params(reg.get(name).obj(reg.make_config(name, {}, kind), spec))
    assert counts[("fpn", "shared")] == counts[("fpn", "cross_attention")]
    assert abs(counts[("fpn", "bi_direction")] / 1e6 - 37) <= 1.0
    fused_spec = FPNS.get("shared").obj(FPNS.make_config("shared", {}, "fpn"), spec).out_spec
    for name in ("shared", "cross_attention", "bi_direction"):
        dec = DECODERS.get(name).obj(DECODERS.make_config(name, {}, "decoder"), fused_spec, spec)
        counts[("decoder", name)] = count_params(dec)
    assert counts[("decoder", "shared")] == counts[("decoder", "cross_attention")]
    assert abs(counts[("decoder", "bi_direction")] / 1e6 - 14) <= 1.0


def test_pwam_options_are_validated():
    with pytest.raises(RisbenchError, match="feed_back"):
        FPNS.make_config("pwam", {"gate": True, "feed_back": False}, "fpn")
    with pytest.raises(RisbenchError, match="stages"):
        FPNS.get("pwam").obj(FPNS.make_config("pwam", {"stages": [0, 5]}, "fpn"), joint_spec())
    with pytest.raises(RisbenchError, match="position"):
        FPNS.make_config("bi_direction", {"position": "middle"}, "fpn")
    with pytest.raises(RisbenchError, match="mlp_on"):
        DECODERS.make_config("bi_direction", {"mlp_on": "text"}, "decoder")


def test_pwam_on_a_pyramid_encoder():
    """Swin-like stages (16/32/64/128 channels at strides 4..32) with 24-d words: the fused pyramid, finest first,
    at the stages' own widths, and the coarsest map projected to d_w as `visual`."""
    spec = FeatureSpec((16, 32, 64, 128), (4, 8, 16, 32), 24, frozenset({"multi_scale", "text_tokens"}))
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[1, 4:] = True
    words = torch.randn(B, L, 24, generator=g)
    feats = EncoderFeatures(
        [torch.randn(B, 16 * 2**i, 32 >> i, 32 >> i, generator=g) for i in range(4)], [words] * 4, mask
    )
    fpn, dec = build(("pwam", {}), ("shared", {"num_heads": 2}), spec)
    assert "pyramid" in fpn.out_spec.traits
    assert fpn.out_spec.pyramid_dims == (16, 32, 64, 128) and fpn.out_spec.pyramid_strides == (4, 8, 16, 32)
    assert fpn.out_spec.stride == 32
    fused = fpn(feats)
    assert [tuple(p.shape) for p in fused.pyramid] == [(B, 16 * 2**i, 32 >> i, 32 >> i) for i in range(4)]
    assert fused.visual.shape == (B, 16, 4, 4)
    out = dec(fused, feats)
    assert out.logits.shape == (B, 1, 16, 16)
    (out.logits.square().mean() + sum(p.square().mean() for p in fused.pyramid)).backward()
    for name, p in fpn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    fpn.eval()
    other = [torch.cat([words[:, :1], torch.randn(B, L - 1, 24, generator=g)], 1)] * 4
    with torch.no_grad():
        a = fpn(feats).pyramid
        b = fpn(EncoderFeatures(feats.visual, other, mask)).pyramid
    assert all((x - y).abs().max() > 1e-6 for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "overrides",
    [
        ["fpn.name=cross_attention"],
        ["fpn.name=bi_direction", "fpn.num_heads=2"],
        ["fpn.name=pwam"],
        ["decoder.name=cross_attention"],
        ["decoder.name=bi_direction", "decoder.num_heads=2"],
    ],
)
def test_end_to_end_a_different_expression_gives_a_different_mask(overrides):
    model = build_model("shared-ris-tiny", overrides=["encoder.image_size=64", *overrides]).eval()
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids_a = torch.tensor([[0, 11, 12, 13, 2, 1]])
    ids_b = torch.tensor([[0, 51, 52, 53, 2, 1]])
    pad = torch.tensor([[False] * 5 + [True]])
    with torch.no_grad():
        a, b = model(image, ids_a, pad).logits, model(image, ids_b, pad).logits
    assert a.shape == (1, 1, 32, 32)  # 64 px, patch 8: an 8x8 grid, two x2 upsamplings
    assert (a - b).abs().max() > 1e-6
