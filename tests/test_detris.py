"""DETRIS in the harness: towers, adapters, neck, CRIS decoder; parameter counts against the official code
(jiaqihuang01/DETRIS@c94b1e1e, counted by running it, docs/decisions.md §11); the released-checkpoint layout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from risbench.errors import RisbenchError
from risbench.models.adapters.dense_aligner import DenseAligner, DenseAlignerConfig
from risbench.models.adapters.text_adapter import TextAdapter, TextAdapterConfig
from risbench.models.decoders.cris import CrisDecoder, CrisDecoderConfig
from risbench.models.detris_checkpoint import convert_detris, load_detris_checkpoint
from risbench.models.fpn.detris import DetrisNeck, DetrisNeckConfig
from risbench.models.interfaces import FeatureSpec
from risbench.models.layers import count_params
from risbench.models.segmenter import build_model
from risbench.models.towers.clip_convert import convert_openai_clip
from risbench.models.towers.clip_text import ClipTextConfig, ClipTextTower
from risbench.models.towers.dinov2_convert import resize_pos_embed

DATA = Path(__file__).parent / "data"
SPEC = FeatureSpec((768,) * 3, (14,) * 3, 512, frozenset({"single_scale", "text_tokens", "sentence"}), 512)


def test_adapter_params_match_the_official_code() -> None:
    """Per adapter, as the official model counts them: 2,297,376 / 6 (B), 2,692,128 / 6 (L), 418,320 / 6 (text)."""
    assert count_params(DenseAligner(DenseAlignerConfig(dim=128), 768, 512)) == 2_297_376 // 6
    assert count_params(DenseAligner(DenseAlignerConfig(dim=128), 1024, 512)) == 2_692_128 // 6
    assert count_params(TextAdapter(TextAdapterConfig(dim=64), 512)) == 418_320 // 6


def test_neck_decoder_projector_params_match_the_official_code() -> None:
    neck = DetrisNeck(DetrisNeckConfig(), SPEC)
    assert count_params(neck) == 10_114_560
    dec = CrisDecoder(CrisDecoderConfig(), neck.out_spec, SPEC)
    assert count_params(dec.transformer) == 7_899_136
    assert count_params(dec.projector) == 4_788_737
    assert (
        count_params(DetrisNeck(DetrisNeckConfig(), dataclasses.replace(SPEC, visual_dims=(1024,) * 3))) == 10_507_776
    )


def test_tiny_detris_trains_only_adapters_and_heads() -> None:
    torch.manual_seed(0)
    model = build_model(
        {
            "encoder": {"name": "dual", **_tiny_dual()},
            "fpn": {"name": "detris", "dim": 16, "num_heads": 2},
            "decoder": {"name": "cris", "num_layers": 1, "num_heads": 2, "dim_ffn": 16},
        }
    )
    for name, p in model.encoder.named_parameters():
        assert p.requires_grad == (".adapters." in name), name
    ids = torch.randint(1, 90, (2, 7))
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    out = model(torch.randn(2, 3, 56, 56), ids, pad).logits
    assert out.shape == (2, 1, 16, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in model.encoder.vision.adapters.parameters())
    assert all(p.grad is None for p in model.encoder.vision.model.parameters())


def _tiny_dual() -> dict:
    from risbench.models.encoders.dual import DualEncoder

    return dict(DualEncoder.tiny_options)


def test_clip_tower_matches_an_openai_layout_reference() -> None:
    """Our tower on converted OpenAI-layout weights = CLIP's block computed with nn.MultiheadAttention."""
    torch.manual_seed(0)
    cfg = ClipTextConfig(size="tiny-test", vocab_size=50, context_length=10, max_text_len=8)
    width, heads = 32, 2
    blocks = nn.ModuleList()
    for _ in range(2):
        b = nn.ModuleDict(
            {
                "ln_1": nn.LayerNorm(width),
                "attn": nn.MultiheadAttention(width, heads),
                "ln_2": nn.LayerNorm(width),
                "c_fc": nn.Linear(width, 64),
                "c_proj": nn.Linear(64, width),
            }
        )
        blocks.append(b)
    tok, pos, ln_final = nn.Embedding(50, width), torch.randn(10, width), nn.LayerNorm(width)
    proj = torch.randn(width, width)
    sd = {
        "token_embedding.weight": tok.weight,
        "positional_embedding": pos,
        "text_projection": proj,
        "ln_final.weight": ln_final.weight,
        "ln_final.bias": ln_final.bias,
        "logit_scale": torch.tensor(1.0),
        "visual.conv1.weight": torch.zeros(1),
    }
    for i, b in enumerate(blocks):
        for k, v in b.state_dict().items():
            k = k.replace("c_fc", "mlp.c_fc").replace("c_proj", "mlp.c_proj")
            sd[f"transformer.resblocks.{i}.{k}"] = v
    tower = ClipTextTower(cfg)
    tower.load_converted(convert_openai_clip(sd), "test")
    ids = torch.tensor([[3, 5, 7, 49 % 50, 0, 0]])
    pad = torch.tensor([[False, False, False, False, True, True]])
    words, sentence = tower(ids, pad)
    with torch.no_grad():
        x = (tok(ids) + pos[:6]).transpose(0, 1)
        mask = torch.full((6, 6), float("-inf")).triu(1)
        for b in blocks:
            h = b["ln_1"](x)
            x = x + b["attn"](h, h, h, need_weights=False, attn_mask=mask)[0]
            h = b["c_fc"](b["ln_2"](x))
            x = x + b["c_proj"](h * torch.sigmoid(1.702 * h))  # CLIP's QuickGELU
        ref = ln_final(x.transpose(0, 1))
    torch.testing.assert_close(words, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sentence, ref[:, 3] @ proj, atol=1e-5, rtol=1e-5)


def test_position_table_resize_is_dinov2s() -> None:
    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = resize_pos_embed(pos, 32)
    assert out.shape == (1, 1 + 32 * 32, 8)
    ref = nn.functional.interpolate(
        pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2), scale_factor=(32.1 / 37, 32.1 / 37), mode="bicubic"
    )
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 8))
    assert resize_pos_embed(out, 32) is out


@pytest.mark.parametrize("size", ["b", "l"])
def test_official_checkpoint_layout_maps_key_by_key(size: str) -> None:
    """Every key of the official model (names and shapes read off the official code, tests/data/) lands on one of
    ours with its shape, and every one of ours is filled (built on the meta device: no memory, no time)."""
    shapes = json.loads((DATA / f"detris_{size}_official_keys.json").read_text())
    with torch.device("meta"):
        model = build_model(f"detris-{size}")
        sd = {k: torch.empty(v) for k, v in shapes.items()}
    converted = convert_detris(sd, model.encoder.vision.grid)
    target = model.state_dict()
    assert set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)


def test_a_checkpoint_that_does_not_fit_fails_in_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(
        {
            "encoder": {"name": "dual", **_tiny_dual()},
            "fpn": {"name": "detris", "dim": 16, "num_heads": 2},
            "decoder": {"name": "cris", "num_layers": 1, "num_heads": 2, "dim_ffn": 16},
        }
    )
    path = tmp_path / "best_model.pth"
    torch.save({"epoch": 1, "state_dict": {"module.neck.txt_proj.weight": torch.zeros(16, 32)}}, path)
    with pytest.raises(RisbenchError) as info:
        load_detris_checkpoint(model, path)
    assert "\n" not in str(info.value) and "missing" in str(info.value)
    torch.save({"state_dict": {"module.nope.weight": torch.zeros(1)}}, path)
    with pytest.raises(RisbenchError, match="unexpected key 'nope.weight'"):
        load_detris_checkpoint(model, path)
