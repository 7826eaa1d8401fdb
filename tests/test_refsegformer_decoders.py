"""RefSegformer's decoders, MSDeformAttn, the refsegformer_ce loss and the decoder checkpoint converter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.decoders.refsegformer_pixel import RefSegformerPixelConfig, RefSegformerPixelDecoder
from risbench.models.decoders.refsegformer_xattn import RefSegformerXattnConfig, RefSegformerXattnDecoder
from risbench.models.interfaces import EncoderFeatures, FeatureSpec, FusedSpec
from risbench.models.msdeform_attn import MSDeformAttn, ms_deform_sample, reference_points
from risbench.models.refsegformer_checkpoint import load_refsegformer_decoder
from risbench.registry import DECODERS, FPNS
from risbench.train.losses import build_loss

DIMS, STRIDES = (8, 16, 24, 32), (4, 8, 16, 32)
MEMORY = frozenset({"multi_scale", "text_tokens", "stage_memory"})
OFFICIAL_KEYS = Path(__file__).parent / "data" / "refsegformer_official_decoder_keys.json"


def bilinear_dense(value: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Bilinear read of value (C, h, w) at normalised (x, y), zero outside, written out corner by corner."""
    _, h, w = value.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(value.shape[0])
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        if 0 <= xi < w and 0 <= yi < h:
            out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * value[:, yi, xi]
    return out


def test_ms_deform_sample_equals_a_dense_bilinear_sum() -> None:
    g = torch.Generator().manual_seed(0)
    shapes, heads, dh, nq, points = [(4, 5), (2, 3)], 2, 3, 4, 2
    value = torch.randn(1, sum(h * w for h, w in shapes), heads, dh, generator=g)
    loc = torch.rand(1, nq, heads, len(shapes), points, 2, generator=g) * 1.2 - 0.1  # some points fall outside
    weights = torch.rand(1, nq, heads, len(shapes), points, generator=g)
    got = ms_deform_sample(value, shapes, loc, weights).view(nq, heads, dh)
    levels = value[0].split([h * w for h, w in shapes])
    for q in range(nq):
        for hd in range(heads):
            want = torch.zeros(dh)
            for lvl, (h, w) in enumerate(shapes):
                v = levels[lvl][:, hd].T.reshape(dh, h, w)
                for p in range(points):
                    x, y = loc[0, q, hd, lvl, p].tolist()
                    want += weights[0, q, hd, lvl, p] * bilinear_dense(v, x, y)
            torch.testing.assert_close(got[q, hd], want, atol=1e-5, rtol=1e-5)


def test_msdeform_attn_with_zero_offsets_reads_its_own_pixel() -> None:
    """1 level, 1 point, zero offsets, weight 1 (one softmax entry): each query reads the value at its own pixel
    centre, so out = x + output_proj(value_proj(x))."""
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=8, heads=2, levels=1, points=1)
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    x, shapes = torch.randn(2, 12, 8), [(3, 4)]
    out = attn(x, torch.randn(2, 12, 8), reference_points(shapes, 2, x.device, x.dtype), shapes)
    torch.testing.assert_close(out, x + attn.output_proj(attn.value_proj(x)), atol=1e-5, rtol=1e-5)


def test_msdeform_attn_init_points_spread_around_the_reference() -> None:
    attn = MSDeformAttn(dim=8, heads=4, levels=2, points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    torch.testing.assert_close(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))  # head 0: +x
    torch.testing.assert_close(bias[1, 1, 1], torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)  # head 1: +y
    assert float(attn.attention_weights.weight.abs().sum()) == 0.0


def _build(name: str, traits=MEMORY, **options):
    spec = FeatureSpec(DIMS, STRIDES, 12, traits)
    fpn = FPNS.get("passthrough").obj(FPNS.make_config("passthrough", {}, "fpn"), spec)
    cls = DECODERS.get(name).obj
    cfg = DECODERS.make_config(name, {**cls.tiny_options, **options}, "decoder")
    return fpn, cls(cfg, fpn.out_spec, FeatureSpec(DIMS, STRIDES, 12, traits))


def _feats(seed: int = 0, size: int = 64) -> EncoderFeatures:
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(2, d, size // s, size // s, generator=g) for d, s in zip(DIMS, STRIDES, strict=True)]
    mem = [None] + [torch.randn(2, 5, d, generator=g) for d in DIMS[1:]]
    pad = torch.zeros(2, 4, dtype=torch.bool)
    pad[1, 3] = True
    return EncoderFeatures(maps, [torch.randn(2, 4, 12, generator=g)] * 4, pad, memory=mem)


@pytest.mark.parametrize("name", ["refsegformer_pixel", "refsegformer_xattn"])
def test_decoders_forward_backward(name: str) -> None:
    fpn, dec = _build(name)
    feats = _feats()
    out = dec(fpn(feats), feats)
    assert out.logits.shape == (2, 1, 16, 16)
    batch = {"exists": torch.tensor([True, False]), "mask": (torch.rand(2, 64, 64) > 0.5)}
    target = F.interpolate(batch["mask"][:, None].float(), size=(16, 16))
    loss = sum(build_loss("refsegformer_ce")(out.logits, target, batch).values())
    loss = loss + sum(dec.extra_losses(out, target, batch).values())
    loss.backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None]
    assert not missing and torch.isfinite(loss)
    if name == "refsegformer_xattn":
        assert sorted(k for k in out.aux if k.startswith("mask_")) == ["mask_1", "mask_2", "mask_3"]
        assert out.aux["exist_query"].shape == (2, DIMS[1], 8, 8)
        dec.eval()
        assert not any(k.startswith("mask_") for k in dec(fpn(feats), feats).aux)


def test_xattn_reads_the_stage_memory_through_a_zero_initialised_norm() -> None:
    fpn, dec = _build("refsegformer_xattn")
    dec.eval()
    feats, other = _feats(0), _feats(0)
    other.memory = [None] + [m + 1.0 for m in other.memory[1:]]
    with torch.no_grad():
        same = dec(fpn(feats), feats).logits, dec(fpn(other), other).logits
        torch.testing.assert_close(*same)  # BN weight 0: the attention starts switched off
        for norm in dec.norms:
            norm.weight.fill_(1.0)
        for attn in dec.cross_attns:  # std 1 instead of the released 0.001, so that the change shows
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                torch.nn.init.normal_(lin.weight)
        changed = dec(fpn(feats), feats).logits, dec(fpn(other), other).logits
    assert (changed[0] - changed[1]).abs().max() > 1e-4


def test_xattn_memory_source_fusion_needs_the_trait() -> None:
    with pytest.raises(IncompatibleError, match="stage_memory.*set memory_source: words"):
        _build("refsegformer_xattn", traits=frozenset({"multi_scale", "text_tokens"}), memory_source="fusion")
    _, dec = _build("refsegformer_xattn", traits=frozenset({"multi_scale", "text_tokens"}))
    assert hasattr(dec, "word_proj")  # auto without the trait: the words


def test_refsegformer_ce_by_hand() -> None:
    """Sample 0 positive, d = [[0, ln3], [ln3, 0]] with target [[1, 1], [0, 0]]; sample 1 negative, d = ln3
    everywhere. BCE of d: t=1 -> log(1 + e^-d), t=0 -> log(1 + e^d)."""
    l3 = math.log(3.0)
    logits = torch.tensor([[[[0.0, l3], [l3, 0.0]]], [[[l3, l3], [l3, l3]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    batch = {"exists": torch.tensor([True, False])}
    pos = (math.log(2) + math.log(4 / 3) + math.log(4) + math.log(2)) / 4
    terms = build_loss("refsegformer_ce", {"full_resolution": False})(logits, target, batch)
    assert terms["ce"].item() == pytest.approx(pos + 0.4 * math.log(4), rel=1e-6)
    # the same as the released 2-class cross-entropy on (bg, fg) = (0, d)
    two = torch.cat([torch.zeros_like(logits), logits], 1)
    ce = F.cross_entropy(two[:1], target[:1, 0].long()) + 0.4 * F.cross_entropy(two[1:], target[1:, 0].long())
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    # the existence hook: BCE(sigmoid(0)) = log 2 for each sample, weight 1.0
    terms = build_loss("refsegformer_ce")(logits, target, batch, exist_logits=torch.zeros(2))
    assert terms["exist_bce"].item() == pytest.approx(math.log(2), rel=1e-6)


def test_refsegformer_ce_at_the_input_resolution() -> None:
    """Constant logit d at 2x2, a 4x4 input mask with 4 foreground pixels: (4 log(1+e^-d) + 12 log(1+e^d)) / 16."""
    d = 0.7
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1
    terms = build_loss("refsegformer_ce")(torch.full((1, 1, 2, 2), d), torch.zeros(1, 1, 2, 2), {"mask": mask})
    want = (4 * math.log1p(math.exp(-d)) + 12 * math.log1p(math.exp(d))) / 16
    assert terms["ce"].item() == pytest.approx(want, rel=1e-6)


def test_negatives_are_down_weighted() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 4, 4, generator=g, requires_grad=True)
    target = torch.zeros(2, 1, 4, 4)
    target[0, :, 1:3, 1:3] = 1
    batch = {"exists": torch.tensor([True, False])}
    grads, values = [], []
    for w in (0.4, 1.0):
        loss = build_loss("refsegformer_ce", {"neg_weight": w, "full_resolution": False})(logits, target, batch)["ce"]
        (grad,) = torch.autograd.grad(loss, logits)
        grads.append(grad)
        values.append(loss.item())
    neg = F.binary_cross_entropy_with_logits(logits[1], target[1]).item()
    assert values[1] - values[0] == pytest.approx(0.6 * neg, rel=1e-5)
    torch.testing.assert_close(grads[0][0], grads[1][0])  # positives untouched
    torch.testing.assert_close(grads[0][1], 0.4 * grads[1][1])  # the negative's gradient x0.4


def test_xattn_aux_losses_weights() -> None:
    """0.4 x (CE(pos) + 0.4 CE(neg)) per auxiliary mask, each upsampled to the input mask (2-class CE by hand)."""
    fpn, dec = _build("refsegformer_xattn")
    feats = _feats()
    out = dec(fpn(feats), feats)
    mask = (torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.5).long()
    batch = {"exists": torch.tensor([True, False]), "mask": mask}
    want = 0.0
    for k in ("mask_1", "mask_2", "mask_3"):
        d = F.interpolate(out.aux[k], size=(64, 64), mode="bilinear", align_corners=True)
        two = torch.cat([torch.zeros_like(d), d], 1)
        want += 0.4 * (F.cross_entropy(two[:1], mask[:1]) + 0.4 * F.cross_entropy(two[1:], mask[1:]))
    got = dec.extra_losses(out, torch.zeros(2, 1, 16, 16), batch)["refsegformer_aux"]
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def _official_checkpoint(tmp_path: Path, kind: str, wrap: bool = True) -> tuple[Path, dict]:
    """Random tensors under the official key names and shapes (tests/data: dumped from the official code at
    Swin embed_dim 32), saved as main.py saves them."""
    keys = json.loads(OFFICIAL_KEYS.read_text())[kind]
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) if shape else torch.tensor(3) for k, shape in keys.items()}
    sd["text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(4, 2)  # other parts are left alone
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "optimizer": {}, "epoch": 0} if wrap else sd, path)
    return path, sd


OFFICIAL_DIMS = (32, 64, 128, 256)


def _full_decoder(kind: str, **options):
    spec = FusedSpec(256, 32, frozenset({"pyramid"}), OFFICIAL_DIMS, STRIDES)
    enc = FeatureSpec(OFFICIAL_DIMS, STRIDES, 768, MEMORY)
    if kind == "pixel":
        return RefSegformerPixelDecoder(RefSegformerPixelConfig(**options), spec, enc)
    return RefSegformerXattnDecoder(RefSegformerXattnConfig(num_heads=(1, 2, 4, 8)), spec, enc)


@pytest.mark.parametrize("kind", ["pixel", "xattn"])
def test_released_decoder_keys_load_strictly(tmp_path: Path, kind: str) -> None:
    path, sd = _official_checkpoint(tmp_path, kind)
    dec = _full_decoder(kind)
    load_refsegformer_decoder(dec, path)
    ours = dec.state_dict()
    if kind == "pixel":
        torch.testing.assert_close(
            ours["encoder.layers.5.ffns.0.layers.0.0.weight"],
            sd["segmentation.pixel_decoder.encoder.layers.5.ffns.0.layers.0.0.weight"],
        )
        torch.testing.assert_close(ours["mask_conv.weight"], sd["segmentation.mask_conv.weight"])
        assert not any(k.startswith("cross_attns.") for k in ours)  # the build's unused modules are dropped
        held = _full_decoder(kind, release_unused_params=True)  # ... or held, to count as released
        load_refsegformer_decoder(held, path)
        torch.testing.assert_close(
            held.state_dict()["cross_attns.0.q_proj.weight"], sd["segmentation.cross_attns.0.fc_q.weight"]
        )
        exist = sum(
            math.prod(s)
            for k, s in json.loads(OFFICIAL_KEYS.read_text())["pixel"].items()
            if "src_cross_attn" in k or "exist_pred" in k or "num_batches" in k or "running" in k
        )
        params = sum(math.prod(s) for s in json.loads(OFFICIAL_KEYS.read_text())["pixel"].values()) - exist
        assert sum(p.numel() for p in held.parameters()) == params
    else:
        torch.testing.assert_close(ours["cross_attns.2.out_proj.bias"], sd["segmentation.cross_attns.2.fc_o.bias"])
        key = "projects.1.norm2.running_var"
        torch.testing.assert_close(ours[key], sd[f"segmentation.{key}"])


def test_released_decoder_mismatches_are_one_line(tmp_path: Path) -> None:
    path, _ = _official_checkpoint(tmp_path, "xattn", wrap=False)
    with pytest.raises(RisbenchError, match="no pixel_decoder.* keys.*use decoder refsegformer_xattn"):
        load_refsegformer_decoder(_full_decoder("pixel"), path)
    path, sd = _official_checkpoint(tmp_path, "pixel")
    with pytest.raises(RisbenchError, match="pixel-decoder key.*use decoder refsegformer_pixel"):
        load_refsegformer_decoder(_full_decoder("xattn"), path)
    del sd["segmentation.mask_conv.bias"]
    torch.save({"model": sd}, path)
    with pytest.raises(RisbenchError, match=r"1 missing \(e\.g\. \['mask_conv\.bias'\]\), 0 unexpected") as exc:
        load_refsegformer_decoder(_full_decoder("pixel"), path)
    assert "\n" not in str(exc.value)
    sd["segmentation.extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, path)
    with pytest.raises(RisbenchError, match="unexpected decoder key 'segmentation.extra.weight'"):
        load_refsegformer_decoder(_full_decoder("pixel"), path)
