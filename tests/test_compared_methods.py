"""The compared methods: CRIS FPN, CGFormer and DMMI decoders, and the simple feature pyramid (tiny configs)."""

from __future__ import annotations

import pytest
import torch

from risbench.errors import IncompatibleError
from risbench.models.interfaces import EncoderFeatures, FeatureSpec, FusedFeatures, FusedSpec
from risbench.models.pyramid import SimpleFeaturePyramid
from risbench.registry import DECODERS, FPNS

B, L = 2, 7
PAD = torch.tensor([[False] * L, [False] * 5 + [True] * 2])


def encoder_feats(dims, grids, text_dim=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    visual = [torch.randn(B, d, s, s, generator=g) for d, s in zip(dims, grids, strict=True)]
    text = [torch.randn(B, L, text_dim, generator=g) for _ in dims]
    return EncoderFeatures(visual, text, PAD.clone())


def single_scale_spec(n=4, dim=48):
    return FeatureSpec((dim,) * n, (16,) * n, dim, frozenset({"joint_tokens", "single_scale"}))


def build_fpn(name, spec, **opts):
    return FPNS.get(name).obj(FPNS.make_config(name, opts, "test"), spec)


def build_decoder(name, fused_spec, enc_spec, **opts):
    return DECODERS.get(name).obj(DECODERS.make_config(name, opts, "test"), fused_spec, enc_spec)


def assert_all_grads(module, loss, skip=()):
    module.zero_grad()
    loss.backward()
    missing = [
        n for n, p in module.named_parameters() if n not in skip and (p.grad is None or not torch.any(p.grad != 0))
    ]
    assert not missing, f"parameters without gradient: {missing}"


# ------------------------------------------------------------------------------------ simple pyramid


def test_simple_feature_pyramid_strides_and_dims():
    sfp = SimpleFeaturePyramid(32, (4, 2, 1, 0.5), (8, 16, 24, 40))
    outs = sfp(torch.randn(B, 32, 8, 8))
    assert [tuple(o.shape[1:]) for o in outs] == [(8, 32, 32), (16, 16, 16), (24, 8, 8), (40, 4, 4)]
    assert sfp.out_dims == (8, 16, 24, 40) and sfp.out_strides(16) == (4, 8, 16, 32)
    # resampling only (no 1x1 + 3x3 convs): widths follow from the deconvolutions
    bare = SimpleFeaturePyramid(32, (4, 2, 1, 0.5), out_convs=False)
    assert bare.out_dims == (8, 16, 32, 32)
    # one input per level, other scales
    per_level = SimpleFeaturePyramid((16, 24), (2, 0.25), 12)
    outs = per_level([torch.randn(B, 16, 8, 8), torch.randn(B, 24, 8, 8)])
    assert [tuple(o.shape[1:]) for o in outs] == [(12, 16, 16), (12, 2, 2)]
    with pytest.raises(IncompatibleError, match="power of two"):
        SimpleFeaturePyramid(32, (3,), 8)


# ------------------------------------------------------------------------------------------ CRIS FPN


def test_cris_fpn_single_scale_shapes_grads_and_text():
    spec = single_scale_spec()
    fpn = build_fpn("cris", spec, out_channels=[16, 32, 64])
    feats = encoder_feats((48,) * 4, (8,) * 4)
    fpn.train()
    out = fpn(feats)
    assert out.visual.shape == (B, 32, 8, 8) and out.text.shape == (B, L, 32) and out.visual_cls is None
    assert fpn.out_spec.dim == 32 and fpn.out_spec.stride == 16 and "text_tokens" in fpn.out_spec.traits
    assert_all_grads(fpn, out.visual.square().mean() + out.text.square().mean())
    fpn.eval()
    with torch.no_grad():
        other = encoder_feats((48,) * 4, (8,) * 4, seed=1)
        other.visual = feats.visual  # same image, different expression
        assert not torch.allclose(fpn(feats).visual, fpn(other).visual)


def test_cris_fpn_pyramid_and_multi_scale():
    fpn = build_fpn("cris", single_scale_spec(3), out_channels=[16, 32, 64], pyramid=True, pyramid_dims=[8, 16, 24])
    out = fpn(encoder_feats((48,) * 3, (8,) * 3))
    assert out.visual.shape == (B, 32, 8, 8) and fpn.out_spec.stride == 16
    # a Swin-like pyramid: the last three of four stages at strides 8/16/32, as in CRIS
    swin = FeatureSpec((8, 16, 32, 64), (4, 8, 16, 32), 48, frozenset({"multi_scale"}))
    fpn = build_fpn("cris", swin, out_channels=[16, 32, 64])
    out = fpn(encoder_feats((8, 16, 32, 64), (32, 16, 8, 4)))
    assert out.visual.shape == (B, 32, 8, 8) and fpn.out_spec.stride == 16


def test_cris_fpn_needs_three_stages():
    with pytest.raises(IncompatibleError, match="at least 3 encoder stages.*returns 2"):
        build_fpn("cris", single_scale_spec(2))


# ----------------------------------------------------------------------------------------- decoders

FUSED_SPEC = FusedSpec(32, 16, frozenset({"text_tokens"}))
CGFORMER = {"token_dim": 32, "image_size": 128, "pyramid": {"dims": [8, 16, 24, 40]}}
DMMI = {"hidden_dim": 32, "lan_dim": 40, "num_heads": 4, "ffn_dim": 48, "pyramid": {"dims": [8, 16, 24, 40]}}


def fused_inputs(seed=0, text_seed=None):
    feats = encoder_feats((48,) * 4, (8,) * 4, seed=seed)
    g = torch.Generator().manual_seed(seed if text_seed is None else text_seed)
    fused = FusedFeatures(
        torch.randn(B, 32, 8, 8, generator=torch.Generator().manual_seed(seed)),
        torch.randn(B, L, 32, generator=g),
        PAD.clone(),
    )
    return fused, feats


def target():
    return (torch.rand(B, 1, 32, 32, generator=torch.Generator().manual_seed(3)) > 0.5).float()


@pytest.mark.parametrize("name,opts", [("cgformer", CGFORMER), ("dmmi", DMMI)])
def test_decoder_shapes_losses_grads_and_text(name, opts):
    torch.manual_seed(0)
    dec = build_decoder(name, FUSED_SPEC, single_scale_spec(), **opts)
    fused, feats = fused_inputs()
    dec.train()
    out = dec(fused, feats)
    assert out.logits.shape == (B, 1, 32, 32)  # 1/4 of a 128 px input (fused map at stride 16)
    assert out.aux, "training mode returns the auxiliary tensors"
    losses = dec.extra_losses(out, target(), {"exists": torch.tensor([True, False])})
    assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    # CGFormer's temperature sits at its init 1 > 0 behind clamp(max=0), so it never gets a gradient
    # (as in the released code); every other parameter does, the training-only branches included.
    skip = {"cga_first.tau", "cga_shared.tau"} if name == "cgformer" else set()
    assert_all_grads(dec, out.logits.square().mean() + sum(losses.values()), skip)

    dec.eval()
    with torch.no_grad():
        first = dec(fused, feats)
        assert first.aux == {} and dec.extra_losses(first, target(), {}) == {}
        assert torch.equal(first.logits, dec(fused, feats).logits)  # deterministic evaluation
        other, _ = fused_inputs(text_seed=5)  # same image, different expression
        assert not torch.allclose(first.logits, dec(other, feats).logits)


@pytest.mark.parametrize("name,opts", [("cgformer", CGFORMER), ("dmmi", DMMI)])
def test_decoder_pyramid_sources(name, opts):
    fused, feats = fused_inputs()
    # pyramid from encoder stages for the two finest levels
    dec = build_decoder(name, FUSED_SPEC, single_scale_spec(), pyramid_source="encoder", **opts).eval()
    assert dec.pyramid.from_encoder == (0, 1)
    assert dec(fused, feats).logits.shape == (B, 1, 32, 32)
    # a pyramid provided by the FPN (LAVT-style) is used as it is
    spec = FusedSpec(32, 16, frozenset({"text_tokens", "pyramid"}), (8, 16, 24, 40), (4, 8, 16, 32))
    dec = build_decoder(name, spec, single_scale_spec(), **opts).eval()
    assert dec.pyramid.sfp is None
    fused.pyramid = [torch.randn(B, c, s, s) for c, s in zip((8, 16, 24, 40), (32, 16, 8, 4), strict=True)]
    assert dec(fused, feats).logits.shape == (B, 1, 32, 32)
    with pytest.raises(IncompatibleError, match="pyramid_source"):
        build_decoder(name, FUSED_SPEC, single_scale_spec(), pyramid_source="nowhere", **opts)


def test_cgformer_full_resolution_output_and_unused_params():
    fused, feats = fused_inputs()
    base = build_decoder("cgformer", FUSED_SPEC, single_scale_spec(), **CGFORMER)
    full = build_decoder("cgformer", FUSED_SPEC, single_scale_spec(), output_stride=1, **CGFORMER).eval()
    assert full(fused, feats).logits.shape == (B, 1, 32, 32)  # computed at 128^2, pooled to 1/4
    n = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in full.parameters()) == n  # same parameters, only the resolution differs
    released = build_decoder("cgformer", FUSED_SPEC, single_scale_spec(), release_unused_params=True, **CGFORMER)
    extra = 2 * (2 * 32 + 32 * 64 + 64 + 64 * 32 + 32)  # LayerNorm + MLP(32 -> 64 -> 32), stages 2 and 3
    assert sum(p.numel() for p in released.parameters()) == n + extra


def test_dmmi_unused_template_layers_counted():
    base = build_decoder("dmmi", FUSED_SPEC, single_scale_spec(), **DMMI)
    released = build_decoder("dmmi", FUSED_SPEC, single_scale_spec(), release_unused_params=True, **DMMI)
    layers = [base.t2i_1.layer, base.t2i_2.layer, base.i2t.layer]
    extra = sum(p.numel() for layer in layers for p in layer.parameters())
    assert sum(p.numel() for p in released.parameters()) == sum(p.numel() for p in base.parameters()) + extra


# ------------------------------------------------------------------------------- with the real encoder


@pytest.mark.parametrize(
    "part,opts",
    [
        ("fpn", {"name": "cris", "out_channels": [16, 32, 64]}),
        ("decoder", {"name": "cgformer", "token_dim": 32, "image_size": 64, "pyramid": {"dims": [8, 8, 16, 16]}}),
        (
            "decoder",
            {
                "name": "dmmi",
                "hidden_dim": 32,
                "lan_dim": 32,
                "num_heads": 4,
                "ffn_dim": 32,
                "pyramid": {"dims": [8, 8, 16, 16]},
            },
        ),
    ],
)
def test_segmenter_end_to_end(part, opts):
    from risbench.models.segmenter import build_segmenter
    from risbench.spec import resolve_model_spec

    spec = resolve_model_spec("shared-ris-tiny", ["encoder.image_size=64", "encoder.patch_size=16"])
    spec[part] = opts
    model = build_segmenter(spec).eval()
    ids = torch.randint(3, 100, (B, 6))
    pad = torch.zeros(B, 6, dtype=torch.bool)
    with torch.no_grad():
        out = model(torch.randn(B, 3, 64, 64), ids, pad)
    assert out.logits.shape == (B, 1, 16, 16)


def test_dmmi_i2t_in_eval_counted_but_output_unchanged():
    from risbench.flops import count_flops

    class Logits(torch.nn.Module):
        def __init__(self, dec):
            super().__init__()
            self.dec = dec

        def forward(self, visual, text, pad):
            feats = EncoderFeatures([visual] * 4, [text] * 4, pad)
            return self.dec(FusedFeatures(visual, text, pad), feats).logits

    fused, _ = fused_inputs()
    spec = FeatureSpec((32,) * 4, (16,) * 4, 32, frozenset())
    torch.manual_seed(0)
    plain = build_decoder("dmmi", FUSED_SPEC, spec, **DMMI).eval()
    torch.manual_seed(0)
    full = build_decoder("dmmi", FUSED_SPEC, spec, i2t_in_eval=True, **DMMI).eval()
    inputs = (fused.visual, fused.text, fused.text_pad_mask)
    with torch.no_grad():
        assert torch.equal(Logits(plain)(*inputs), Logits(full)(*inputs))
        flops_plain, _ = count_flops(Logits(plain), inputs)
        flops_full, _ = count_flops(Logits(full), inputs)
    assert flops_full["dec.i2t"] > 0 and flops_plain["dec.i2t"] == 0
