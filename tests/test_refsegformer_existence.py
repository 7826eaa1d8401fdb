"""RefSegformer's own existence head (`existence: {name: refsegformer}`): what it reads, that its BCE trains the head
only and is counted once, its parameters and FLOPs against the official head (counted by running the official
code, tests/data/refsegformer_official_keys.json), and the one-line refusals of models it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from risbench.errors import IncompatibleError, RisbenchError
from risbench.flops import count_flops
from risbench.models.decoders.refsegformer_common import official_attention  # noqa: F401  (shared with the head)
from risbench.models.existence.refsegformer import RefSegformerExistenceConfig, RefSegformerExistenceHead
from risbench.models.interfaces import DecoderOutput, EncoderFeatures, FeatureSpec, FusedSpec
from risbench.models.segmenter import build_model
from risbench.registry import ENCODERS
from risbench.train.losses import build_loss
from risbench.train.optim import optimization_step

OFFICIAL = json.loads((Path(__file__).parent / "data" / "refsegformer_official_keys.json").read_text())
MEMORY = frozenset({"multi_scale", "text_tokens", "stage_memory"})
# a small refsegformer-like model: the tiny Swin / BERT of the contract tests, VLTF after stages 2-4
SMALL = {
    "encoder": {
        "name": "swin_bert",
        "size": "tiny-test",
        "image_size": 64,
        "window_size": 4,
        "vocab_size": 100,
        "out_indices": [1, 2, 3, 4],
        "out_norm": False,
        "stage_fusion": {"name": "vltf", "num_mem": 3, "num_neg_mem": 2},
    },
    "fpn": {"name": "passthrough", "project": False},
    "existence": {"name": "refsegformer"},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small(decoder: str = "refsegformer_xattn", **options) -> torch.nn.Module:
    enc = {k: v for k, v in SMALL["encoder"].items() if k != "name"}
    dims = ENCODERS.get("swin_bert").obj(ENCODERS.make_config("swin_bert", enc, "encoder")).out_spec.visual_dims
    torch.manual_seed(0)
    dec = {"name": decoder, **options}
    if decoder == "refsegformer_xattn":
        dec.setdefault("num_heads", [1, 1, 1, 1])
    else:
        dec = {"dim": dims[1], "num_layers": 1, "num_heads": 2, "num_points": 2, "ffn_dim": 16, "num_groups": 4, **dec}
    return build_model("refsegformer", **SMALL, decoder=dec)


def inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 100, (b, 7), generator=g)
    pad = torch.zeros(b, 7, dtype=torch.bool)
    pad[-1, 5:] = True
    return torch.randn(b, 3, 64, 64, generator=g), ids, pad


@pytest.mark.parametrize("decoder", ["refsegformer_xattn", "refsegformer_pixel"])
def test_head_reads_the_first_vltf_memory_and_the_decoder_query(decoder: str) -> None:
    model = small(decoder).eval()
    head = model.existence
    assert head.stage == 1  # out stage 1 = Swin stage 2, the first VLTF (the released memory_list[1])
    seen = {}
    model.existence.register_forward_hook(lambda m, args, out: seen.update(args=args))
    with torch.no_grad():
        out = model(*inputs())
    fused, feats, dec_out = seen["args"]
    assert out.exist_logits.shape == (2,)
    # the same logit by hand: attention from the query map's positions to that memory, mean, Linear
    q = dec_out.aux["exist_query"].flatten(2).transpose(1, 2)
    by_hand = head.exist_pred(head.src_cross_attn(q, feats.memory[1]).mean(1))[:, 0]
    torch.testing.assert_close(out.exist_logits, by_hand)
    # the memory is what moves it: another memory, another logit
    feats.memory[1] = feats.memory[1] + 1.0
    assert not torch.allclose(head(fused, feats, dec_out), out.exist_logits)


def test_head_trains_alone_and_its_bce_is_counted_once() -> None:
    model = small().train()
    image, ids, pad = inputs(4)
    batch = {
        "image": image,
        "text_ids": ids,
        "text_pad_mask": pad,
        "mask": torch.zeros(4, 64, 64, dtype=torch.bool),
        "exists": torch.tensor([True, False, True, False]),
    }
    batch["mask"][0, 10:30, 10:30] = True
    loss_fn = build_loss("refsegformer_ce")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, terms = optimization_step(
        model, model.decoder, loss_fn, opt, batch, torch.device("cpu"), amp="none", clip_grad=None
    )
    assert set(terms) == {"ce", "refsegformer_aux", "exist"}  # no second existence term from the loss
    torch.testing.assert_close(loss, sum(terms.values()))
    # the BCE alone reaches the head only (both of its inputs are detached, as released)
    model.zero_grad()
    out = model(image, ids, pad)
    torch.nn.functional.binary_cross_entropy_with_logits(out.exist_logits, torch.ones(4)).backward()
    assert all(p.grad is not None for p in model.existence.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("existence."))


@pytest.mark.parametrize("build, grid", [("pixel", 120), ("xattn", 60)])
def test_params_and_flops_match_the_official_head(build: str, grid: int) -> None:
    """At the released sizes: Swin-B's stage-2 memory (256 wide, 8 heads, 20 + 10 tokens), queries at 120^2 (the
    pixel decoder's mask feature) or 60^2 (the cross-attention decoder's level 1), batch 1."""
    spec = FeatureSpec((128, 256, 512, 1024), (4, 8, 16, 32), 768, MEMORY, 0, (0, 256, 512, 1024), (0, 8, 16, 32))
    fused_spec = FusedSpec(1024, 32, frozenset({"pyramid"}))
    head = RefSegformerExistenceHead(RefSegformerExistenceConfig(), fused_spec, spec, {"exist_query": 256}).eval()
    official = OFFICIAL["existence_head_counts"][build]
    assert sum(p.numel() for p in head.parameters()) == official["params"]
    pad = torch.zeros(1, 20, dtype=torch.bool)

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
            feats = EncoderFeatures([], [], pad, memory=[None, memory, None, None])
            return self.head(None, feats, DecoderOutput(torch.zeros(1, 1, 1, 1), {"exist_query": query}))

    with torch.no_grad():
        by_module, _ = count_flops(Wrap(), (torch.randn(1, 256, grid, grid), torch.randn(1, 30, 256)))
    assert by_module[""] == official["flops"]


def test_incompatible_models_are_refused_naming_both_sides() -> None:
    with pytest.raises(
        IncompatibleError, match="existence head 'refsegformer' needs stage_memory but encoder 'swin_bert'"
    ):
        build_model(
            "refsegformer",
            **{**SMALL, "encoder": {**SMALL["encoder"], "stage_fusion": None}},
            decoder={"name": "refsegformer_xattn", "num_heads": [1, 1, 1, 1], "memory_source": "words"},
        )
    with pytest.raises(IncompatibleError, match="needs exist_query but decoder 'cris' provides nothing"):
        build_model(
            "refsegformer", **{**SMALL, "fpn": {"name": "passthrough", "project": True}}, decoder={"name": "cris"}
        )
    with pytest.raises(IncompatibleError, match=r"width 16\).*width 64\).*must match"):
        small("refsegformer_pixel", dim=16)
    with pytest.raises(IncompatibleError, match="fpn 'passthrough' provides pyramid"):  # pooled reads the words
        build_model(
            "refsegformer", **{**SMALL, "existence": {"name": "pooled"}}, decoder={"name": "refsegformer_xattn"}
        )


def test_presets_carry_the_head() -> None:
    from risbench.spec import resolve_model_spec

    for name in ("refsegformer", "refsegformer-tiny"):
        assert resolve_model_spec(name)["existence"]["name"] == "refsegformer"


def test_passthrough_without_projections_holds_nothing() -> None:
    with torch.device("meta"):
        model = build_model("refsegformer")
    assert sum(p.numel() for p in model.fpn.parameters()) == 0
    assert model.fpn.out_spec.traits == frozenset({"pyramid"}) and model.fpn.out_spec.dim == 1024
    with pytest.raises(RisbenchError, match="dim 64 needs project: true"):
        build_model("refsegformer", fpn={"name": "passthrough", "project": False, "dim": 64})
