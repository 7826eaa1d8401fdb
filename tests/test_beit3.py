"""BEiT-3 encoder: official checkpoint layout, strict loading, position interpolation, forward contract."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from risbench.errors import RisbenchError
from risbench.models.encoders.beit3 import Beit3Config, Beit3Encoder
from risbench.models.encoders.beit3_checkpoint import VISION_POS_KEY, interpolate_vision_positions

SMALL = dict(embed_dim=64, depth=2, num_heads=2, vocab_size=100, max_text_positions=40, drop_path=0.0)
HEAD_KEYS = ("vision_head.weight", "language_head.weight", "logit_scale")


def small(**kw) -> Beit3Encoder:
    opts = dict(SMALL, image_size=32, patch_size=8, out_indices=(1, 2))
    opts.update(kw)
    return Beit3Encoder(Beit3Config(size="tiny", **opts))


def official_state_dict(image_size: int = 224, patch: int = 16, dim: int = 64, depth: int = 2) -> dict:
    """Random tensors in the official unilm/torchscale key layout (written out by hand, not from our model)."""
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    sd = {
        "beit3.text_embed.weight": t(SMALL["vocab_size"], dim),
        "beit3.vision_embed.mask_token": t(1, 1, dim),
        "beit3.vision_embed.cls_token": t(1, 1, dim),
        "beit3.vision_embed.proj.weight": t(dim, 3, patch, patch),
        "beit3.vision_embed.proj.bias": t(dim),
        "beit3.encoder.embed_positions.A.weight": t((image_size // patch) ** 2 + 3, dim),
        "beit3.encoder.embed_positions.B.weight": t(SMALL["max_text_positions"], dim),
    }
    for way in "AB":
        sd[f"beit3.encoder.layer_norm.{way}.weight"] = t(dim)
        sd[f"beit3.encoder.layer_norm.{way}.bias"] = t(dim)
    for i in range(depth):
        pre = f"beit3.encoder.layers.{i}."
        for way in "AB":
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                sd[f"{pre}self_attn.{proj}.{way}.weight"] = t(dim, dim)
                sd[f"{pre}self_attn.{proj}.{way}.bias"] = t(dim)
            for ln in ("self_attn.inner_attn_ln", "self_attn_layer_norm", "final_layer_norm"):
                sd[f"{pre}{ln}.{way}.weight"] = t(dim)
                sd[f"{pre}{ln}.{way}.bias"] = t(dim)
            sd[f"{pre}ffn.{way}.fc1.weight"] = t(4 * dim, dim)
            sd[f"{pre}ffn.{way}.fc1.bias"] = t(4 * dim)
            sd[f"{pre}ffn.{way}.ffn_layernorm.weight"] = t(4 * dim)
            sd[f"{pre}ffn.{way}.ffn_layernorm.bias"] = t(4 * dim)
            sd[f"{pre}ffn.{way}.fc2.weight"] = t(dim, 4 * dim)
            sd[f"{pre}ffn.{way}.fc2.bias"] = t(dim)
    sd["vision_head.weight"] = t(10, dim)
    sd["language_head.weight"] = t(10, dim)
    sd["logit_scale"] = t(1)
    return sd


def test_official_checkpoint_loads_with_interpolated_positions(tmp_path, caplog):
    sd = official_state_dict()
    path = tmp_path / "beit3_small_224.pth"
    torch.save({"model": sd}, path)
    with caplog.at_level(logging.INFO):
        enc = small(image_size=480, patch_size=16, weights=str(path))
    report = enc.load_report
    assert enc.weights == str(path)
    assert sorted(report.ignored) == sorted(HEAD_KEYS)
    assert "vision_head.weight" in caplog.text  # the ignored keys are logged, not dropped silently
    assert report.loaded == len(sd) - len(HEAD_KEYS)
    assert report.interpolated == f"{VISION_POS_KEY}: 14x14 -> 30x30"

    own = enc.state_dict()
    pos = own[VISION_POS_KEY]
    assert pos.shape == (30 * 30 + 3, 64)
    src = sd["beit3." + VISION_POS_KEY]
    assert torch.equal(pos[:3], src[:3])
    for key, value in sd.items():
        if key.startswith("beit3.") and key != "beit3." + VISION_POS_KEY:
            assert torch.equal(own[key[len("beit3.") :]], value), key
    # the grid was resized, not copied: a 14x14 grid is no sub-block of the 30x30 one
    assert not torch.allclose(pos[3 : 3 + 14], src[3 : 3 + 14])


def test_checkpoint_without_interpolation_and_plain_layouts(tmp_path):
    sd = official_state_dict(image_size=32, patch=8)
    for i, wrapped in enumerate([{"module": sd}, sd]):
        path = tmp_path / f"ckpt{i}.pth"
        torch.save(wrapped, path)
        enc = small(weights=str(path))
        assert enc.load_report.interpolated is None
        assert torch.equal(enc.state_dict()[VISION_POS_KEY], sd["beit3." + VISION_POS_KEY])


def test_wrong_key_or_shape_fails_naming_the_key(tmp_path):
    sd = official_state_dict()
    bad = dict(sd)
    bad["beit3.encoder.layers.0.self_attn.qkv_proj.A.weight"] = bad.pop(
        "beit3.encoder.layers.0.self_attn.q_proj.A.weight"
    )
    path = tmp_path / "badkey.pth"
    torch.save({"model": bad}, path)
    with pytest.raises(RisbenchError) as info:
        small(image_size=480, patch_size=16, weights=str(path))
    msg = str(info.value)
    assert "beit3.encoder.layers.0.self_attn.q_proj.A.weight" in msg  # missing
    assert "beit3.encoder.layers.0.self_attn.qkv_proj.A.weight" in msg  # unexpected

    bad = dict(sd)
    bad["beit3.encoder.layers.1.ffn.B.fc1.weight"] = torch.zeros(100, 64)
    path = tmp_path / "badshape.pth"
    torch.save({"model": bad}, path)
    with pytest.raises(RisbenchError, match=r"beit3\.encoder\.layers\.1\.ffn\.B\.fc1\.weight.*\(100, 64\)"):
        small(image_size=480, patch_size=16, weights=str(path))


@pytest.mark.parametrize(("saved", "built", "fix"), [("conv", "patch", "stem=conv"), ("patch", "conv", "stem=patch")])
def test_stem_mismatch_says_which_side_has_which_stem(tmp_path, saved, built, fix):
    path = tmp_path / "enc.pth"
    sd = {"beit3." + k: v for k, v in small(stem=saved).state_dict().items()}
    torch.save({"model": sd}, path)
    with pytest.raises(RisbenchError, match=f"set encoder.{fix}"):
        small(stem=built, weights=str(path))
    small(stem=saved, weights=str(path))  # the same stem loads


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(RisbenchError, match="nope.pth"):
        small(weights=str(path))


def test_random_init_warns_and_applies_magneto_scaling(caplog):
    with caplog.at_level(logging.WARNING):
        torch.manual_seed(0)
        enc = small(depth=4, out_indices=(2, 4))
    assert enc.weights == "random" and enc.load_report is None
    assert "beit3: no weights given, random init" in caplog.text
    # nn.Linear's default init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the scaled ones exceed that bound
    bound = 1 / math.sqrt(64)
    scale = math.sqrt(math.log(2 * 4))
    attn = enc.encoder.layers[0].self_attn
    assert attn.v_proj.A.weight.abs().max() > bound
    assert attn.q_proj.A.weight.abs().max() <= bound
    assert attn.out_proj.B.weight.abs().max() <= bound * scale


def test_scratch_init_puts_words_and_positions_on_one_scale():
    torch.manual_seed(0)
    ref = small(init="torchscale", vocab_size=1000)
    torch.manual_seed(0)
    scratch = small(init="scratch", vocab_size=1000)
    # torchscale: words N(0, d^-0.5) under positions N(0, 1); scratch: both N(0, 0.02)
    assert ref.text_embed.weight.std() < 0.2 < ref.encoder.embed_positions.B.weight.std()
    for table in (scratch.text_embed, scratch.encoder.embed_positions.A, scratch.encoder.embed_positions.B):
        assert table.weight.std().item() == pytest.approx(0.02, rel=0.1)
    attn = scratch.encoder.layers[0].self_attn
    assert attn.q_proj.A.weight.std().item() == pytest.approx(0.02, rel=0.1)  # trunc-normal(0.02)
    assert attn.v_proj.A.weight.std().item() == pytest.approx(0.02 * math.sqrt(math.log(4)), rel=0.1)  # x Magneto
    assert attn.q_proj.A.bias.abs().max() == 0
    with pytest.raises(RisbenchError, match=r"unknown encoder beit3 init 'unilm'.*known: scratch, "):
        small(init="unilm")


def test_scratch_sincos_starts_patch_positions_as_sine_cosine():
    from risbench.models.encoders.beit3 import sincos_2d
    from risbench.models.encoders.beit3_layers import POSITION_OFFSET

    table = sincos_2d(4, 8)
    assert table.shape == (16, 8)
    assert torch.allclose(table[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))  # row 0, column 0
    assert torch.allclose(table[1, 4:], torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]))
    torch.manual_seed(0)
    enc = small(init="scratch_sincos")  # 32 px / patch 8 -> 4 x 4 grid, width 64
    rows = enc.encoder.embed_positions.A.weight
    assert torch.allclose(rows[POSITION_OFFSET + 1 :], sincos_2d(4, 64))
    assert rows[POSITION_OFFSET].abs().max() < 0.2  # the CLS row keeps its N(0, 0.02) draw
    assert rows.requires_grad  # a starting point, not frozen


def test_forward_shapes_and_out_indices():
    enc = small(out_indices=(1, 2)).eval()
    b, length = 2, 7
    ids = torch.randint(0, 100, (b, length))
    pad = torch.zeros(b, length, dtype=torch.bool)
    feats = enc(torch.randn(b, 3, 32, 32), ids, pad)
    assert len(feats.visual) == len(feats.text) == len(feats.visual_cls) == 2
    for v, t, c in zip(feats.visual, feats.text, feats.visual_cls, strict=True):
        assert v.shape == (b, 64, 4, 4) and t.shape == (b, length, 64) and c.shape == (b, 64)
    assert feats.text_pad_mask is pad
    spec = enc.out_spec
    assert spec.visual_dims == (64, 64) and spec.visual_strides == (8, 8) and spec.text_dim == 64
    assert {"joint_tokens", "single_scale", "visual_cls", "text_tokens"} == set(spec.traits)
    for bad in [(0, 2), (1, 3), (2, 1), ()]:
        with pytest.raises(RisbenchError, match="out_indices"):
            small(out_indices=bad)


def test_last_stage_gets_final_layernorm_intermediate_does_not():
    enc = small(out_indices=(1, 2)).eval()
    with torch.no_grad():
        for way in (enc.encoder.layer_norm.A, enc.encoder.layer_norm.B):
            way.weight.fill_(2.0)
            way.bias.fill_(5.0)
        feats = enc(torch.randn(1, 3, 32, 32), torch.randint(0, 100, (1, 5)), torch.zeros(1, 5, dtype=torch.bool))
    last = feats.text[-1]
    assert torch.allclose(last.mean(-1), torch.full_like(last.mean(-1), 5.0), atol=1e-4)  # LN output
    assert not torch.allclose(feats.text[0].mean(-1), torch.full_like(last.mean(-1), 5.0), atol=1e-1)


def test_extra_padding_does_not_change_real_tokens():
    enc = small().eval()
    torch.manual_seed(1)
    image = torch.randn(2, 3, 32, 32)
    ids = torch.randint(3, 100, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    ids[1, 4:] = 1
    longer_ids = torch.cat([ids, torch.ones(2, 5, dtype=torch.long)], dim=1)
    longer_pad = torch.cat([pad, torch.ones(2, 5, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        a = enc(image, ids, pad)
        b = enc(image, longer_ids, longer_pad)
    for k in range(2):
        assert torch.allclose(a.visual[k], b.visual[k], atol=1e-5)
        assert torch.allclose(a.visual_cls[k], b.visual_cls[k], atol=1e-5)
        assert torch.allclose(a.text[k][0], b.text[k][0, :6], atol=1e-5)
        assert torch.allclose(a.text[k][1, :4], b.text[k][1, :4], atol=1e-5)


def test_gradients_reach_every_used_parameter():
    enc = small(out_indices=(1, 2)).train()
    ids = torch.randint(0, 100, (2, 5))
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    feats = enc(torch.randn(2, 3, 32, 32), ids, pad)
    loss = sum(v.square().mean() for v in feats.visual) + sum(t.square().mean() for t in feats.text)
    loss = loss + sum(c.square().mean() for c in feats.visual_cls)
    loss.backward()
    # mask_token exists only for checkpoint compatibility (BEiT-3 MIM pretraining); the forward never uses it
    unused = {"vision_embed.mask_token"}
    for name, p in enc.named_parameters():
        if name in unused:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_same_seed_same_init():
    torch.manual_seed(123)
    a = small().state_dict()
    torch.manual_seed(123)
    b = small().state_dict()
    torch.manual_seed(124)
    c = small().state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["encoder.layers.0.self_attn.q_proj.A.weight"], c["encoder.layers.0.self_attn.q_proj.A.weight"]
    )


def test_no_weight_decay_names_exist():
    enc = small()
    names = dict(enc.named_parameters())
    assert enc.no_weight_decay() <= set(names)
    assert "encoder.embed_positions.A.weight" in enc.no_weight_decay()


def test_position_interpolation_keeps_offset_rows_and_constant_grids():
    table = torch.randn(3 + 4 * 4, 8)
    table[3:] = torch.arange(8.0)  # every grid row identical: any resize must reproduce it
    out = interpolate_vision_positions(table, 6 * 6)
    assert out.shape == (3 + 36, 8)
    assert torch.equal(out[:3], table[:3])
    assert torch.allclose(out[3:], torch.arange(8.0).expand(36, 8), atol=1e-5)
    assert torch.allclose(interpolate_vision_positions(table, 16), table)
    with pytest.raises(RisbenchError, match="not square"):
        interpolate_vision_positions(torch.randn(3 + 12, 8), 36)


def reference_forward(sd: dict, image, ids, pad, heads: int, patch: int, depth: int) -> list[torch.Tensor]:
    """A plain re-statement of the torchscale BEiT-3 computation from a state dict (explicit softmax,
    -inf key masking, per-token modality choice), returning torchscale's encoder_states[1:] with the
    final multiway LayerNorm on the last one."""
    F = torch.nn.functional

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    def ln(x, name, eps=1e-5):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)

    def way(fn, x, name, split):  # A on the vision tokens, B on the text tokens
        return torch.cat([fn(x[:, :split], name.format("A")), fn(x[:, split:], name.format("B"))], 1)

    patches = F.conv2d(image, sd["vision_embed.proj.weight"], sd["vision_embed.proj.bias"], stride=patch)
    vis = torch.cat([sd["vision_embed.cls_token"].expand(len(image), 1, -1), patches.flatten(2).transpose(1, 2)], 1)
    n = vis.shape[1]
    vis = vis + sd["encoder.embed_positions.A.weight"][2 : 2 + n]
    txt = sd["text_embed.weight"][ids] + sd["encoder.embed_positions.B.weight"][2 : 2 + ids.shape[1]]
    x = torch.cat([vis, txt], 1)
    key_pad = torch.cat([torch.zeros(len(image), n, dtype=torch.bool), pad], 1)
    x = x * (~key_pad)[..., None]
    b, t, d = x.shape
    states = []
    for i in range(depth):
        pre = f"encoder.layers.{i}."
        h = way(ln, x, pre + "self_attn_layer_norm.{}", n)
        q, k, v = (way(lin, h, pre + f"self_attn.{p}.{{}}", n) for p in ("q_proj", "k_proj", "v_proj"))
        q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        logits = (q * (d // heads) ** -0.5) @ k.transpose(-1, -2)
        logits = logits.masked_fill(key_pad[:, None, None, :], float("-inf"))
        a = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        a = way(lin, way(ln, a, pre + "self_attn.inner_attn_ln.{}", n), pre + "self_attn.out_proj.{}", n)
        x = x + a

        def ffn(z, name):
            return lin(ln(F.gelu(lin(z, name + ".fc1")), name + ".ffn_layernorm"), name + ".fc2")

        x = x + way(ffn, way(ln, x, pre + "final_layer_norm.{}", n), pre + "ffn.{}", n)
        states.append(x)
    states[-1] = way(ln, states[-1], "encoder.layer_norm.{}", n)
    return states


def test_forward_matches_reference_statement():
    enc = small(depth=3, out_indices=(1, 2, 3)).eval()
    with torch.no_grad():  # non-trivial LayerNorms and tokens so that every term matters
        for name, p in enc.named_parameters():
            if "norm" in name or "ln" in name or "token" in name:
                p.add_(0.2 * torch.randn_like(p))
    image = torch.randn(2, 3, 32, 32)
    ids = torch.randint(3, 100, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 3:] = True
    with torch.no_grad():
        feats = enc(image, ids, pad)
        ref = reference_forward(enc.state_dict(), image, ids, pad, heads=2, patch=8, depth=3)
    for k in range(3):
        ours = torch.cat([feats.visual_cls[k][:, None], feats.visual[k].flatten(2).transpose(1, 2), feats.text[k]], 1)
        real = torch.cat([torch.ones(2, 17, dtype=torch.bool), ~pad], 1)
        assert torch.allclose(ours[real], ref[k][real], atol=1e-5), k


def test_drop_path_rises_linearly_and_meta_construction():
    with torch.device("meta"):
        enc = small(depth=5, drop_path=0.2, out_indices=(5,))
    assert [round(layer.drop_path.p, 6) for layer in enc.encoder.layers] == [0.0, 0.05, 0.1, 0.15, 0.2]
