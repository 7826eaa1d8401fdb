"""The Swin + BERT dual encoder: shapes, official Swin checkpoint conversion, offline BERT, gradients, text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from risbench.errors import RisbenchError
from risbench.models.encoders.swin_bert import SWIN_SIZES, SwinBertConfig, SwinBertEncoder
from risbench.models.encoders.swin_convert import resize_position_table
from risbench.registry import ENCODERS

S = 64  # tiny-test: patch 4 -> grids 16/8/4/2
WINDOW = 4


def tiny(**kw) -> SwinBertEncoder:
    torch.manual_seed(0)
    args = {"size": "tiny-test", "image_size": S, "window_size": WINDOW, "vocab_size": 100, "drop_path": 0.0}
    return SwinBertEncoder(SwinBertConfig(**{**args, **kw})).eval()


def inputs(batch: int = 2, length: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, S, S, generator=g)
    ids = torch.randint(5, 100, (batch, length), generator=g)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[-1, 5:] = True
    return image, ids, pad


def official_state_dict(window: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the original Microsoft Swin layout for the tiny-test architecture."""
    g = torch.Generator().manual_seed(seed)
    embed, depths, heads = SWIN_SIZES["tiny-test"]

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    sd = {
        "patch_embed.proj.weight": r(embed, 3, 4, 4),
        "patch_embed.proj.bias": r(embed),
        "patch_embed.norm.weight": 1 + r(embed),
        "patch_embed.norm.bias": r(embed),
    }
    for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        dim = embed * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            sd |= {
                p + "norm1.weight": 1 + r(dim),
                p + "norm1.bias": r(dim),
                p + "attn.qkv.weight": r(3 * dim, dim),
                p + "attn.qkv.bias": r(3 * dim),
                p + "attn.relative_position_bias_table": r((2 * window - 1) ** 2, h),
                p + "attn.relative_position_index": torch.zeros(window**2, window**2, dtype=torch.long),
                p + "attn.proj.weight": r(dim, dim),
                p + "attn.proj.bias": r(dim),
                p + "norm2.weight": 1 + r(dim),
                p + "norm2.bias": r(dim),
                p + "mlp.fc1.weight": r(4 * dim, dim),
                p + "mlp.fc1.bias": r(4 * dim),
                p + "mlp.fc2.weight": r(dim, 4 * dim),
                p + "mlp.fc2.bias": r(dim),
            }
        if i < len(depths) - 1:
            sd |= {
                f"layers.{i}.downsample.reduction.weight": r(2 * dim, 4 * dim),
                f"layers.{i}.downsample.norm.weight": 1 + r(4 * dim),
                f"layers.{i}.downsample.norm.bias": r(4 * dim),
            }
    last = embed * 2 ** (len(depths) - 1)
    sd |= {"norm.weight": 1 + r(last), "norm.bias": r(last), "head.weight": r(10, last), "head.bias": r(10)}
    return sd


def save(sd, tmp_path, name="swin.pth"):
    path = tmp_path / name
    torch.save({"model": sd}, path)
    return str(path)


def test_registered_and_forward_shapes():
    assert ENCODERS.get("swin_bert").config is SwinBertConfig
    enc = tiny()
    assert enc.tokenizer_family == "wordpiece" and enc.weights == "random"
    assert enc.pixel_mean == (0.485, 0.456, 0.406) and enc.pixel_std == (0.229, 0.224, 0.225)
    spec = enc.out_spec
    assert spec.visual_dims == (32, 64, 128, 256) and spec.visual_strides == (4, 8, 16, 32)
    assert spec.text_dim == 64 and spec.traits == {"multi_scale", "text_tokens"}
    image, ids, pad = inputs()
    feats = enc(image, ids, pad)
    assert [tuple(v.shape) for v in feats.visual] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]
    assert len(feats.text) == 4 and all(tuple(t.shape) == (2, 7, 64) for t in feats.text)
    assert feats.visual_cls is None and feats.text_pad_mask is pad
    sub = tiny(out_indices=(2, 4))
    assert sub.out_spec.visual_strides == (8, 32)
    assert [v.shape[1] for v in sub(image, ids, pad).visual] == [64, 256]


def test_bad_options_fail_with_one_line():
    with pytest.raises(RisbenchError, match="out_indices"):
        tiny(out_indices=(0, 1))
    with pytest.raises(RisbenchError, match="multiple of 32"):
        tiny(image_size=72)
    with pytest.raises(RisbenchError, match="unknown size"):
        tiny(size="huge")
    with pytest.raises(RisbenchError, match="expected 64x64"):
        tiny()(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool))


def _reference_stage1(sd: dict, image: torch.Tensor, window: int, heads: int) -> torch.Tensor:
    """Stage 1 (one non-shifted block) of the ORIGINAL Swin layout, written out from the fused qkv,
    then the fresh per-stage LayerNorm: the converted model must give the same map."""
    x = F.conv2d(image, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4)
    b, c, h, w = x.shape
    x = F.layer_norm(x.flatten(2).transpose(1, 2), (c,), sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"])
    p = "layers.0.blocks.0."
    shortcut = x
    y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"]).view(b, h, w, c)
    y = y.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, window**2, c)
    n = window**2
    qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    q, k, v = qkv.reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    index = rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]
    bias = sd[p + "attn.relative_position_bias_table"][index.view(-1)].view(n, n, heads).permute(2, 0, 1)
    attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
    y = F.linear((attn @ v).transpose(1, 2).reshape(-1, n, c), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    y = y.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * w, c)
    x = shortcut + y
    z = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
    x = x + F.linear(F.gelu(F.linear(z, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), *_fc2(sd, p))
    x = F.layer_norm(x, (c,))  # out_norms["0"] at init: weight 1, bias 0
    return x.transpose(1, 2).reshape(b, c, h, w)


def _fc2(sd, p):
    return sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"]


def test_official_checkpoint_converts_exactly(tmp_path):
    sd = official_state_dict(window=WINDOW)
    enc = tiny(swin_weights=save(sd, tmp_path))
    rep = enc.swin_report
    assert rep.unplaced == [] and rep.resized == []
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias"} <= set(rep.ignored)
    assert any(k.endswith("relative_position_index") for k in rep.ignored)
    assert enc.weights.startswith("swin=") and "bert=random" in enc.weights
    own = enc.state_dict()
    blk = "swin.encoder.layers.2.blocks.0."
    q, k, v = sd["layers.2.blocks.0.attn.qkv.weight"].chunk(3)
    for name, want in [
        ("attention.q_proj.weight", q),
        ("attention.k_proj.weight", k),
        ("attention.v_proj.weight", v),
        ("attention.v_proj.bias", sd["layers.2.blocks.0.attn.qkv.bias"][-128:]),
        ("attention.o_proj.weight", sd["layers.2.blocks.0.attn.proj.weight"]),
        ("mlp.fc2.bias", sd["layers.2.blocks.0.mlp.fc2.bias"]),
        ("layernorm_after.weight", sd["layers.2.blocks.0.norm2.weight"]),
    ]:
        assert torch.equal(own[blk + name], want), name
    assert torch.equal(
        own["swin.encoder.layers.1.downsample.reduction.weight"], sd["layers.1.downsample.reduction.weight"]
    )
    # the whole first stage computes what the original layout computes
    image = inputs()[0]
    got = enc(image, *inputs()[1:]).visual[0]
    want = _reference_stage1(sd, image, WINDOW, SWIN_SIZES["tiny-test"][2][0])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_window7_tables_are_resized_bicubically(tmp_path):
    sd = official_state_dict(window=7)
    enc = tiny(swin_weights=save(sd, tmp_path))
    assert len(enc.swin_report.resized) == 4 and enc.swin_report.unplaced == []
    table = sd["layers.3.blocks.0.attn.relative_position_bias_table"]  # 13x13 rows, 16 heads
    want = F.interpolate(table.t().reshape(1, 16, 13, 13), size=(7, 7), mode="bicubic", align_corners=False)
    got = enc.state_dict()[
        "swin.encoder.layers.3.blocks.0.attention.relative_position_bias.relative_position_bias_table"
    ]
    assert got.shape == (49, 16)
    torch.testing.assert_close(got, want.reshape(16, 49).t())
    assert resize_position_table(got, WINDOW) is got  # already at the model's window


def test_wrong_or_missing_keys_fail_naming_them(tmp_path):
    sd = official_state_dict(window=WINDOW)
    sd["layers.1.blocks.0.attn.qkvx.weight"] = sd.pop("layers.1.blocks.0.attn.qkv.weight")
    with pytest.raises(RisbenchError) as info:
        tiny(swin_weights=save(sd, tmp_path))
    msg = str(info.value)
    assert (
        "layers.1.blocks.0.attn.qkvx.weight" in msg and "swin.encoder.layers.1.blocks.0.attention.q_proj.weight" in msg
    )
    sd = official_state_dict(window=WINDOW)
    sd["layers.0.blocks.0.mlp.fc1.weight"] = torch.zeros(5, 32)
    with pytest.raises(RisbenchError, match=r"shape mismatch.*layers\.0\.blocks\.0\.mlp\.fc1\.weight"):
        tiny(swin_weights=save(sd, tmp_path, "bad.pth"))
    with pytest.raises(RisbenchError, match="not found"):
        tiny(swin_weights=str(tmp_path / "nope.pth"))


def test_bert_directory_loads_offline(tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(1)
    saved = BertModel(cfg)  # with a pooler: its keys are ignored, not an error
    saved.save_pretrained(tmp_path / "bert")
    enc = tiny(bert_path=str(tmp_path / "bert"))
    assert enc.vocab_size == 120 and enc.weights.endswith(f"bert={tmp_path / 'bert'}")
    assert any(k.startswith("pooler.") for k in enc.bert_report["ignored"])
    ref = saved.state_dict()
    for name, tensor in enc.text_encoder.state_dict().items():
        if name in ref:
            assert torch.equal(tensor, ref[name]), name
    image, ids, pad = inputs()
    words = enc(image, ids, pad).text[0]
    want = saved.eval()(input_ids=ids, attention_mask=(~pad).long()).last_hidden_state
    torch.testing.assert_close(words, want)
    with pytest.raises(RisbenchError, match="config.json"):
        tiny(bert_path=str(tmp_path / "missing"))


def test_gradients_reach_every_parameter():
    enc = tiny().train()
    image, ids, pad = inputs()
    feats = enc(image, ids, pad)
    loss = sum(v.pow(2).mean() for v in feats.visual) + feats.text[0].pow(2).mean()
    loss.backward()
    dead = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_text_changes_the_text_branch_only_and_padding_is_masked():
    enc = tiny()
    image, ids, pad = inputs()
    a = enc(image, ids, pad)
    other = ids.clone()
    other[:, 1:3] = (other[:, 1:3] + 7) % 100
    b = enc(image, other, pad)
    assert not torch.allclose(a.text[0], b.text[0])
    # no fusion inside this encoder: the visual pyramid ignores the text (fusion happens in the FPN)
    for va, vb in zip(a.visual, b.visual, strict=True):
        assert torch.equal(va, vb)
    # padded positions do not change the real words' features
    junk = ids.clone()
    junk[1, 5:] = 3
    c = enc(image, junk, pad)
    torch.testing.assert_close(a.text[0][1, :5], c.text[0][1, :5])


def test_freeze_text():
    enc = tiny(freeze_text=True).train()
    assert not enc.text_encoder.training and all(not p.requires_grad for p in enc.text_encoder.parameters())
    image, ids, pad = inputs()
    sum(v.mean() for v in enc(image, ids, pad).visual).backward()
    assert all(p.grad is None for p in enc.text_encoder.parameters())


def test_attention_is_counted_the_same_with_sdpa_and_eager():
    from risbench.flops import count_flops

    class Wrap(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, image, ids, pad):
            f = self.enc(image, ids, pad)
            return (*f.visual, f.text[0])

    totals = {}
    for impl in ("sdpa", "eager"):
        with torch.no_grad():
            by_module, _ = count_flops(Wrap(tiny(attn_implementation=impl)), inputs(batch=1))
        totals[impl] = by_module[""]
    assert totals["sdpa"] == totals["eager"] > 0


OWN_PRESETS = [
    "cgformer-swin-bert",
    "dmmi-swin-bert",
    "cgformer-beit3",
    "dmmi-beit3",
    *(f"shared-ris-b-fpn-{n}" for n in ("none", "cris", "pwam", "cross-attention", "bi-direction")),
    *(f"shared-ris-b-dec-{n}" for n in ("no-fusion", "cross-attention", "bi-direction", "cgformer", "dmmi")),
]


@pytest.mark.parametrize("preset", OWN_PRESETS)
def test_presets_resolve_and_validate(preset):
    from risbench.registry import DECODERS, FPNS
    from risbench.spec import resolve_model_spec

    spec = resolve_model_spec(preset)
    for key, reg in (("encoder", ENCODERS), ("fpn", FPNS), ("decoder", DECODERS)):
        params = {k: v for k, v in spec[key].items() if k != "name"}
        reg.make_config(spec[key]["name"], params, f"{preset}.{key}")
    if preset.startswith("shared-ris-b-fpn-"):
        assert spec["decoder"] == resolve_model_spec("shared-ris-b")["decoder"]
    if preset == "shared-ris-b-fpn-none":  # a renamed component does not inherit the Shared FPN's options
        assert spec["fpn"] == {"name": "none"}


TINY_SWIN = [
    "encoder.size=tiny-test",
    f"encoder.image_size={S}",
    f"encoder.window_size={WINDOW}",
    "encoder.vocab_size=100",
    "encoder.drop_path=0.0",
    "fpn.dim=64",
]
TINY_DECODERS = {
    "cgformer-swin-bert": ["decoder.token_dim=32", f"decoder.image_size={S}", "decoder.output_stride=4"],
    "dmmi-swin-bert": [
        "decoder.hidden_dim=64",
        "decoder.lan_dim=64",
        "decoder.num_heads=2",
        "decoder.ffn_dim=128",
        "decoder.release_unused_params=false",
    ],
}


@pytest.mark.parametrize("preset", sorted(TINY_DECODERS))
def test_swin_presets_run_end_to_end_at_tiny_scale(preset):
    from risbench.models.segmenter import build_model

    torch.manual_seed(0)
    model = build_model(preset, [*TINY_SWIN, *TINY_DECODERS[preset]]).eval()
    image, ids, pad = inputs()
    with torch.no_grad():
        a = model(image, ids, pad).logits
        other = ids.clone()
        other[:, 1:4] = (other[:, 1:4] + 11) % 100
        b = model(image, other, pad).logits
    assert a.shape == (2, 1, S // 4, S // 4)
    assert not torch.allclose(a, b)  # the expression changes the mask
