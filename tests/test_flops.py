"""FLOP counting (risbench.flops) and the `flops` / `efficiency` commands, on a tiny test-only model."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from risbench import flops
from risbench.cli.main import main
from risbench.errors import RisbenchError
from risbench.models.decoders.head import MaskHeadConfig
from risbench.models.decoders.shared import SharedDecoder, SharedDecoderConfig
from risbench.models.fpn.shared import SharedFPN, SharedFPNConfig
from risbench.models.interfaces import Encoder, EncoderFeatures, FeatureSpec
from risbench.models.layers import Attention, Mlp
from risbench.models.segmenter import Segmenter
from risbench.registry import ENCODERS, Entry

# ------------------------------------------------------------------------------ a tiny test encoder


@dataclass
class TinyJointConfig:
    dim: int = 32
    depth: int = 2
    num_heads: int = 4
    patch_size: int = 8
    image_size: int = 32
    vocab_size: int = 50


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask=mask)
        return x + self.mlp(self.norm2(x))


class TinyJointEncoder(Encoder):
    """Test-only single-stream encoder shaped like BEiT-3: [visual cls, patches, text] per layer."""

    def __init__(self, cfg: TinyJointConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.image_size, self.vocab_size, self.weights = cfg.image_size, cfg.vocab_size, "random"
        self.patch = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList([_Block(d, cfg.num_heads) for _ in range(cfg.depth)])
        stride = cfg.patch_size
        traits = frozenset({"joint_tokens", "single_scale", "visual_cls", "text_tokens"})
        self.out_spec = FeatureSpec((d,) * cfg.depth, (stride,) * cfg.depth, d, traits)

    def forward(self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor) -> EncoderFeatures:
        v = self.patch(image)
        grid = v.shape[-2:]
        v = v.flatten(2).transpose(1, 2)
        nv = v.shape[1] + 1
        x = torch.cat([self.cls.expand(v.shape[0], -1, -1), v, self.embed(text_ids)], 1)
        keep = torch.cat([torch.ones_like(text_pad_mask[:, :1]).expand(-1, nv), ~text_pad_mask], 1)
        mask = keep[:, None, None, :]
        vis, txt, cls = [], [], []
        for blk in self.blocks:
            x = blk(x, mask)
            cls.append(x[:, 0])
            vis.append(x[:, 1:nv].transpose(1, 2).reshape(x.shape[0], -1, *grid))
            txt.append(x[:, nv:])
        return EncoderFeatures(vis, txt, text_pad_mask, cls)


def tiny_model(num_layers: int = 1) -> Segmenter:
    torch.manual_seed(0)
    enc = TinyJointEncoder(TinyJointConfig())
    fpn = SharedFPN(SharedFPNConfig(dim=16, num_heads=2), enc.out_spec)
    dec = SharedDecoder(
        SharedDecoderConfig(num_layers=num_layers, num_heads=2, head=MaskHeadConfig(conv_dim=8)),
        fpn.out_spec,
        enc.out_spec,
    )
    return Segmenter(enc, fpn, dec, {"encoder": {"name": "tiny_joint_test"}})


@pytest.fixture
def tiny_registered(monkeypatch, tmp_path):
    """Register the test encoder for the duration of one test and write a model YAML using it."""
    monkeypatch.setitem(
        ENCODERS._entries, "tiny_joint_test", Entry("tiny_joint_test", TinyJointEncoder, TinyJointConfig)
    )
    spec = {
        "encoder": {"name": "tiny_joint_test", "image_size": 32},
        "fpn": {"name": "shared", "dim": 16, "num_heads": 2},
        "decoder": {"name": "shared", "num_layers": 1, "num_heads": 2, "head": {"conv_dim": 8}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# --------------------------------------------------------------------------- (a) the SDPA handle


class SdpaAttention(nn.Module):
    def __init__(self, dim: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return tuple(t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.split(x)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class ExplicitAttention(SdpaAttention):
    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.split(x)
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1) @ v


def test_sdpa_handle_counts_exactly_like_explicit_matmuls():
    torch.manual_seed(0)
    sdpa, explicit = SdpaAttention(), ExplicitAttention()
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 7, 24)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    torch.testing.assert_close(sdpa(x, mask), explicit(x, mask))
    a, _ = flops.count_flops(sdpa, (x, mask))
    b, _ = flops.count_flops(explicit, (x, mask))
    qkv = 2 * 7 * 24 * 72
    attention = 2 * (2 * 3 * 7 * 7 * 8)  # QK^T + AV: B*H*Nq*Nk*d each
    assert a[""] == b[""] == qkv + attention


def test_sdpa_handle_cross_attention_with_different_value_width():
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 6)

    class M(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    counts, _ = flops.count_flops(M(), (q, k, v))
    assert counts[""] == 2 * 4 * 5 * 9 * 8 + 2 * 4 * 5 * 9 * 6


def test_baddbmm_and_einsum_handles():
    class M(nn.Module):
        def forward(self, bias, a, b, feat, kernel):
            return torch.baddbmm(bias, a, b).sum() + torch.einsum("bchw,bc->bhw", feat, kernel).sum()

    args = (
        torch.randn(2, 3, 5),
        torch.randn(2, 3, 4),
        torch.randn(2, 4, 5),
        torch.randn(2, 7, 11, 13),
        torch.randn(2, 7),
    )
    counts, _ = flops.count_flops(M(), args)
    assert counts[""] == 2 * 3 * 4 * 5 + 2 * 7 * 11 * 13


# --------------------------------------------------------------------- (b) heavy ops must be counted


def test_heavy_op_left_uncounted_raises(monkeypatch):
    monkeypatch.delitem(flops.EXTRA_HANDLES, "aten::scaled_dot_product_attention")
    x = torch.randn(2, 7, 24)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    with pytest.raises(RisbenchError, match="scaled_dot_product_attention"):
        flops.count_flops(SdpaAttention(), (x, mask))


def test_unknown_heavy_op_raises_and_cheap_ops_are_listed():
    class Mv(nn.Module):
        def forward(self, m, v):
            return torch.mv(m, v).softmax(0)

    with pytest.raises(RisbenchError, match="aten::mv"):
        flops.count_flops(Mv(), (torch.randn(4, 3), torch.randn(3)))

    class Cheap(nn.Module):
        def forward(self, x):
            return F.gelu(x).softmax(-1) + x

    counts, uncounted = flops.count_flops(Cheap(), (torch.randn(4, 3),))
    assert counts[""] == 0
    assert {"aten::gelu", "aten::softmax", "aten::add"} <= set(uncounted)


@pytest.mark.parametrize(
    ("op", "heavy"),
    [
        ("aten::matmul", True),
        ("aten::baddbmm", True),
        ("aten::_native_multi_head_attention", True),
        ("aten::conv_transpose2d", True),
        ("aten::linear", True),
        ("prim::PythonOp.MyFunction", True),
        ("aten::softmax", False),
        ("aten::gelu", False),
        ("aten::add", False),
        ("aten::upsample_bicubic2d", False),
        ("aten::embedding", False),
    ],
)
def test_is_heavy(op, heavy):
    assert flops.is_heavy(op) is heavy


# ------------------------------------------------------------------------------- (c) measure()


def test_measure_structure_and_sums():
    model = tiny_model().train()
    model.decoder.requires_grad_(False)
    out = flops.measure(model, image_size=32, text_len=6)
    assert model.training  # mode restored
    assert out["input"] == {"image_size": 32, "text_len": 6, "batch_size": 1}
    assert set(out["components"]) == {"encoder", "fpn", "decoder"}
    comp = out["components"]
    assert all(c["flops"] > 0 for c in comp.values())
    assert sum(c["flops"] for c in comp.values()) == out["total"]["flops"]
    numel = sum(p.numel() for p in model.parameters())
    assert out["total"]["params"] == numel == sum(c["params"] for c in comp.values())
    assert out["total"]["frozen_params"] == sum(p.numel() for p in model.decoder.parameters())
    assert out["total"]["trainable_params"] + out["total"]["frozen_params"] == numel
    assert out["convention"] == "fvcore: one multiply-add = one flop"
    assert out["weights"] == "random"
    assert "aten::gelu" in out["uncounted_ops"]
    json.dumps(out)
    # a second decoder layer adds exactly its own FLOPs to the decoder and nothing elsewhere
    two = flops.measure(tiny_model(num_layers=2), image_size=32, text_len=6)
    assert two["components"]["encoder"]["flops"] == comp["encoder"]["flops"]
    assert two["components"]["decoder"]["flops"] > comp["decoder"]["flops"]


def test_measure_scales_with_batch_and_text_length():
    one = flops.measure(tiny_model(), 32, 6)["total"]["flops"]
    two = flops.measure(tiny_model(), 32, 6, batch_size=2)["total"]["flops"]
    longer = flops.measure(tiny_model(), 32, 10)["total"]["flops"]
    assert two == 2 * one
    assert longer > one


def test_training_only_branch_is_not_traced():
    model = tiny_model()
    base = flops.measure(model, 32, 6)
    model.decoder.aux_head = nn.Linear(16, 1000)  # parameters only; never called at inference
    out = flops.measure(model, 32, 6)
    assert out["total"]["flops"] == base["total"]["flops"]
    assert out["total"]["params"] == base["total"]["params"] + 16 * 1000 + 1000


# ------------------------------------------------------------------------------------- (d) the CLI


def test_cli_flops_json(tiny_registered, capsys):
    assert main(["flops", "--model", str(tiny_registered), "--text-len", "5", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input"]["text_len"] == 5 and out["input"]["image_size"] == 32
    assert out["total"]["flops"] == sum(c["flops"] for c in out["components"].values())


def test_cli_flops_image_size_set_and_formats(tiny_registered, capsys):
    argv = ["flops", "--model", str(tiny_registered), "--image-size", "48", "--set", "decoder.num_layers=2"]
    assert main([*argv, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input"]["image_size"] == 48
    assert main([*argv, "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["component"] for r in rows] == ["encoder", "fpn", "decoder", "total"]
    assert main([*argv, "--format", "table"]) == 0
    text = capsys.readouterr().out
    assert "one multiply-add = one flop" in text and "weights" in text


def test_cli_flops_bad_inputs_exit_2(tiny_registered, capsys):
    assert main(["flops", "--model", str(tiny_registered), "--set", "decoder.no_such_key=1"]) == 2
    assert main(["flops", "--model", str(tiny_registered), "--set", "nosection.key=1"]) == 2
    assert main(["flops", "--model", "no-such-model"]) == 2
    assert main(["flops", "--model", str(tiny_registered), "--format", "xml"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err


# ------------------------------------------------------------------------------ the efficiency table


PAPER = """table,group,variant,encoder,params_m,gflops,p50,p70,p90,oiou,miou
T1,fpn,one layer,Tiny,0.05,0.001,,,,,
T1,fpn,two layers,Tiny,100,100,,,,,
T2,model,dup,A,1,1,,,,,
T2,model,dup,B,2,2,,,,,
"""


def test_efficiency_command(tiny_registered, tmp_path, monkeypatch):
    paper = tmp_path / "paper.csv"
    paper.write_text(PAPER)
    exp = {
        "text_len": 6,
        "paper_tables": str(paper),
        "rows": [
            {"table": "T1", "variant": "one layer", "model": str(tiny_registered), "component": "decoder"},
            {
                "table": "T1",
                "variant": "two layers",
                "model": str(tiny_registered),
                "set": ["decoder.num_layers=2"],
                "component": "total",
                "note": "far off on purpose",
            },
        ],
    }
    exp_path = tmp_path / "eff.yaml"
    exp_path.write_text(yaml.safe_dump(exp))
    out_dir = tmp_path / "out"
    assert main(["efficiency", str(exp_path), "--out", str(out_dir)]) == 0
    text = (out_dir / "efficiency.md").read_text()
    assert "one multiply-add = one flop" in text and "weights: random" in text and "text length: 6" in text
    assert "risbench efficiency" in text
    rows = list(
        csv.DictReader(
            line for line in (out_dir / "efficiency.csv").read_text().splitlines() if not line.startswith("#")
        )
    )
    assert [r["variant"] for r in rows] == ["one layer", "two layers"]
    assert rows[1]["within tolerance"].startswith("no") and rows[1]["note"] == "far off on purpose"
    assert float(rows[0]["paper params (M)"]) == 0.05

    # a variant that is not in the paper table, and an ambiguous one, are errors (exit 2)
    for bad in ({"variant": "three layers"}, {"table": "T2", "variant": "dup"}):
        row = {**exp["rows"][0], **bad}
        exp_path.write_text(yaml.safe_dump({**exp, "rows": [row]}))
        assert main(["efficiency", str(exp_path), "--out", str(out_dir)]) == 2
    # the ambiguity is resolved by naming the encoder column
    row = {**exp["rows"][0], "table": "T2", "variant": "dup", "encoder": "B"}
    exp_path.write_text(yaml.safe_dump({**exp, "rows": [row]}))
    assert main(["efficiency", str(exp_path), "--out", str(out_dir)]) == 0


def test_cli_flops_real_preset_counts_every_heavy_op(capsys):
    """The BEiT-3-shaped CPU preset: every matmul-like op is counted (no heavy op left uncounted)."""
    assert main(["flops", "--model", "shared-ris-tiny", "--image-size", "64", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["weights"] == "random" and out["input"]["image_size"] == 64
    assert all(out["components"][c]["flops"] > 0 for c in ("encoder", "fpn", "decoder"))
    assert not any(flops.is_heavy(op) for op in out["uncounted_ops"])
