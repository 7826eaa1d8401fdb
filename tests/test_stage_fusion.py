"""Early fusion inside the vision tower (risbench/models/stage_fusion/): the hook in the Swin + BERT encoder with
every member at tiny sizes (forward / backward, gradients, the words reaching later stages, padding), DMMI's and
VLTF's structure against the released code, and VLTF's blank tokens on a constructed negative."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from risbench.errors import RisbenchError
from risbench.models.encoders.swin_bert import SwinBertConfig, SwinBertEncoder
from risbench.models.stage_fusion.base import StageInfo
from risbench.models.stage_fusion.dmmi import DMMIFusion, DMMIFusionConfig, RefineLanSim, RefineVisualSim
from risbench.models.stage_fusion.vltf import VLTF, VLTFConfig
from risbench.registry import STAGE_FUSIONS

S, WINDOW, L = 64, 4, 7
MEMBERS = STAGE_FUSIONS.names()
# parameters that get no gradient by construction: the last stage's gate scales the tokens that would continue
# into a next stage, and there is none (the released LAVT / DMMI code registers it too)
UNUSED_AT_LAST_STAGE = {
    "pwam": {"gate.net.0.weight", "gate.net.2.weight"},
    "dmmi": {"res_gate.0.weight", "res_gate.2.weight"},
}


def tiny(stage_fusion=None, seed: int = 0, **kw) -> SwinBertEncoder:
    torch.manual_seed(seed)
    args = {"size": "tiny-test", "image_size": S, "window_size": WINDOW, "vocab_size": 100, "drop_path": 0.0}
    if stage_fusion is not None:
        name = stage_fusion["name"]
        stage_fusion = {**STAGE_FUSIONS.get(name).obj.tiny_options, **stage_fusion}
    return SwinBertEncoder(SwinBertConfig(**{**args, **kw}, stage_fusion=stage_fusion)).eval()


def woken(enc: SwinBertEncoder) -> SwinBertEncoder:
    """The encoder as after some training: VLTF's zero-initialised output BN weight set to 1 (at init VLTF adds
    exactly 0, so no word reaches the map and nothing upstream of that BN gets a gradient)."""
    with torch.no_grad():
        for m in enc.stage_fusion.modules():
            if isinstance(m, torch.nn.BatchNorm1d) and not m.weight.any():
                m.weight.fill_(1.0)
    return enc


def inputs(batch: int = 2, length: int = L, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, S, S, generator=g)
    ids = torch.randint(5, 100, (batch, length), generator=g)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[-1, 5:] = True
    return image, ids, pad


def with_padding(ids, pad, extra: int, seed: int = 1):
    """The same sentences with `extra` more padded positions, and garbage ids in every padded position."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([ids, torch.randint(5, 100, (ids.shape[0], extra), generator=g)], dim=1)
    pad = torch.cat([pad, torch.ones(pad.shape[0], extra, dtype=torch.bool)], dim=1)
    ids = torch.where(pad, torch.randint(5, 100, ids.shape, generator=g), ids)
    return ids, pad


@pytest.mark.parametrize("member", MEMBERS)
def test_hook_forward_backward_and_gradient_into_the_fusion(member):
    enc = woken(tiny({"name": member})).train()
    image, ids, pad = inputs()
    feats = enc(image, ids, pad)
    assert [tuple(v.shape) for v in feats.visual] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]
    assert all(t.shape == (2, L, 64) for t in feats.text)
    loss = sum((v * torch.randn_like(v)).sum() for v in feats.visual)
    # a loss on the visual maps alone reaches the text tower only through the fusion inside Swin
    emb = enc.text_encoder.embeddings.word_embeddings.weight
    (grad,) = torch.autograd.grad(loss, emb, retain_graph=True)
    assert grad.abs().sum() > 0
    words = feats.text[-1] * (~pad)[..., None].float()
    (loss + (words * torch.randn_like(words)).sum()).backward()
    hook = enc.stage_fusion
    last = str(max(hook.stages))
    missing = {n for n, p in hook.named_parameters() if p.requires_grad and p.grad is None}
    expected = {f"fusions.{last}.{n}" for n in UNUSED_AT_LAST_STAGE.get(member, set())}
    assert missing == expected
    assert all(torch.isfinite(p.grad).all() for p in hook.parameters() if p.grad is not None)


@pytest.mark.parametrize("member", MEMBERS)
def test_words_change_the_stages_after_the_first_fused_one(member):
    enc = woken(tiny({"name": member}))
    image, ids, pad = inputs()
    other = ids.clone()
    other[:, 1:4] = (other[:, 1:4] + 11) % 100
    with torch.no_grad():
        a, b = enc(image, ids, pad), enc(image, other, pad)
    first = min(enc.stage_fusion.stages)
    for s in range(1, 5):
        same = torch.allclose(a.visual[s - 1], b.visual[s - 1])
        assert same == (s < first), f"stage {s}"


def _valid(feats, pad):
    keep = (~pad)[..., None].float()
    return [*feats.visual, feats.text[-1] * keep, *(m for m in feats.memory if m is not None)]


@pytest.mark.parametrize(
    "member,options",
    [("pwam", {}), ("dmmi", {}), ("vltf", {"pad_keys": "mask"})],
)
def test_more_padding_with_garbage_changes_nothing(member, options):
    enc = woken(tiny({"name": member, **options}))
    image, ids, pad = inputs()
    ids2, pad2 = with_padding(ids, pad, extra=4)
    with torch.no_grad():
        a = _valid(enc(image, ids, pad), pad)
        b = enc(image, ids2, pad2)
    b = [*b.visual, (b.text[-1] * (~pad2)[..., None].float())[:, :L], *(m for m in b.memory if m is not None)]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_released_vltf_and_dmmi_readings_depend_on_the_padding_as_the_released_code_does():
    image, ids, pad = inputs()
    ids_garbage, _ = with_padding(ids, pad, extra=0, seed=5)
    ids2, pad2 = with_padding(ids, pad, extra=4)
    # VLTF as released: padded words keep logit 0 -> the pad count matters, the pad content does not
    enc = woken(tiny({"name": "vltf"}))
    with torch.no_grad():
        a, same_len, longer = enc(image, ids, pad), enc(image, ids_garbage, pad), enc(image, ids2, pad2)
    torch.testing.assert_close(a.visual[1], same_len.visual[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.memory[1][1], longer.memory[1][1], atol=1e-4)  # sentence 1 is the padded one
    # DMMI as released (`replicate`): the word window next to the sentence end reads the padded words
    enc = tiny({"name": "dmmi", "word_window_pad": "replicate"})
    with torch.no_grad():
        a, b = enc(image, ids, pad), enc(image, ids_garbage, pad)
    assert not torch.allclose(a.visual[1][1], b.visual[1][1], atol=1e-5)


def test_unfused_swin_path_is_reproduced_stage_by_stage():
    """A fresh VLTF adds BN0(...) = 0: with VLTF on stages 2-3 only, Swin's own trajectory is untouched, so the
    stage-by-stage loop must give stage 1 and stage 4 exactly as the unfused encoder (transformers' SwinEncoder)."""
    plain = tiny()
    fused = tiny({"name": "vltf", "stages": [2, 3]})
    fused.load_state_dict(plain.state_dict(), strict=False)
    image, ids, pad = inputs()
    with torch.no_grad():
        a, b = plain(image, ids, pad), fused(image, ids, pad)
    torch.testing.assert_close(b.visual[0], a.visual[0])
    torch.testing.assert_close(b.visual[3], a.visual[3])
    assert b.memory[0] is None and b.memory[3] is None and b.memory[1].shape == (2, 5, 64)
    assert torch.count_nonzero(b.visual[1]) == 0  # the zero-initialised BN weight: VLTF's output starts at 0


def test_stage_fusion_options_are_checked():
    with pytest.raises(RisbenchError, match="dmmi"):
        tiny({"name": "dmi"})
    with pytest.raises(RisbenchError, match="stages"):
        tiny({"name": "pwam", "stages": [0, 2]})
    with pytest.raises(RisbenchError, match="word_window_pad"):
        tiny({"name": "dmmi", "word_window_pad": "reflect"})
    with pytest.raises(RisbenchError, match="did you mean"):
        tiny({"name": "vltf", "num_memm": 3})
    assert tiny({"name": "vltf"}).stage_fusion.stages == (2, 3, 4)  # RefSegformer: no VLTF after stage 1
    assert "stage_memory" in tiny({"name": "vltf"}).out_spec.traits
    assert "stage_memory" not in tiny({"name": "dmmi"}).out_spec.traits


def test_no_out_norm_returns_the_fusion_output_itself():
    enc = tiny({"name": "vltf"}, out_norm=False)
    assert not hasattr(enc, "out_norms")
    assert "out norms" not in enc.flop_parts()
    assert tiny().flop_parts() == {"encoder": ""}


# ------------------------------------------------------------------ structure against the released code


def swin_b_stages(text_dim: int = 768):
    return [StageInfo(i + 1, 128 * 2**i, (4, 8, 16, 32)[i], text_dim) for i in range(4)]


def count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_dmmi_module_has_the_released_parameter_count():
    """toggle1995/RIS-DMMI@753cd60 MultiModalSwinTransformer (Swin-B, random init): fusion + res_gate + W_l of the
    four MMBasicLayers = 49,453,558 parameters, measured on the released code (docs/decisions.md §19)."""
    cfg = DMMIFusionConfig()
    assert sum(count(DMMIFusion(cfg, info)) for info in swin_b_stages()) == 49_453_558


def test_vltf_module_has_the_released_parameter_count():
    """jianzongwu/robust-ref-seg@e7c7da6 SwinTransformerEncoderFusion (Swin-B, n_fuse 3, 20 + 10 tokens): the
    three VLTFs = 26,194,944 parameters, of which vision_lan_fuse (never used) 5,510,400 (docs/decisions.md §19)."""
    cfg = VLTFConfig()
    stages = swin_b_stages()[1:]
    modules = [VLTF(cfg, info) for info in stages]
    assert sum(count(m) for m in modules) == 20_731_648
    assert sum(count(m.vision_lan_fuse) for m in modules) == 5_512_192
    assert [m.feature_fuse.num_heads for m in modules] == [8, 16, 32]
    without = [VLTF(VLTFConfig(vision_to_language=False), info) for info in stages]
    assert sum(count(m) for m in without) == 20_731_648 - 5_512_192


def test_dmmi_convolutions_are_the_released_unfold_plus_1x1():
    """The released RefineVisualSim / RefineLanSim unfold a neighbourhood and apply a 1x1 Conv1d; ours is the
    k-wide conv with the same weights reshaped (what a checkpoint loader does)."""
    torch.manual_seed(0)
    vis = RefineVisualSim(16, 24, 16, 5)
    x = torch.randn(2, 4, 6, 6)  # (B, inner = 16 / 4, H, W)
    conv = vis.f_query2[0]
    flat = conv.weight.reshape(conv.out_channels, -1, 1)
    released = F.conv1d(F.unfold(x, 5, padding=2), flat, conv.bias)
    torch.testing.assert_close(conv(x).flatten(2), released, atol=1e-5, rtol=1e-5)
    lan = RefineLanSim(16, 24, 16, 3, "replicate")
    w = torch.randn(2, 5, 7)  # (B, inner = 16 // 3, N)
    conv = lan.f_query2[0]
    flat = conv.weight.reshape(conv.out_channels, -1, 1)
    padded = F.pad(w.unsqueeze(3), (0, 0, 1, 1), mode="replicate")
    released = F.conv1d(F.unfold(padded, (3, 1)), flat, conv.bias)
    torch.testing.assert_close(conv(F.pad(w, (1, 1), mode="replicate")), released, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ VLTF's blank tokens on a constructed negative


def constructed_vltf(num_neg_mem: int, c: int = 8) -> VLTF:
    """One head, identity projections, BN at identity (eval, fresh stats), output BN weight 1: the attention
    logits are plain dot products of the pixel features with the normalised [blank; memory] tokens."""
    torch.manual_seed(0)
    cfg = VLTFConfig(num_mem=4, num_neg_mem=num_neg_mem, num_heads=1, vision_to_language=False)
    m = VLTF(cfg, StageInfo(2, c, 1, c))
    eye = torch.eye(c)
    with torch.no_grad():
        for conv in (m.input_proj[0], m.lan_proj[0], m.output_proj[0]):
            conv.weight.copy_(eye[..., None])
            conv.bias.zero_()
        for att in (m.memory_fuse, m.feature_fuse):
            for lin in (att.fc_q, att.fc_k, att.fc_v, att.fc_o):
                lin.weight.copy_(eye * (5.0 if lin is att.fc_q else 1.0))
                lin.bias.zero_()
        m.output_proj[1].weight.fill_(1.0)
        # memory tokens read the words; blank tokens point along the pixels' direction e0
        m.memory_token.weight.copy_(torch.randn(4, c))
        if m.neg_memory_token is not None:
            m.neg_memory_token.weight.zero_()
            m.neg_memory_token.weight[:, 0] = 1.0
    return m.eval()


def test_vltf_blank_tokens_take_the_attention_of_an_unrelated_sentence():
    c = 8
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 16, c)
    x[..., 0] = 1.0 + torch.rand(1, 16, generator=g)  # every pixel's query lies along e0
    pad = torch.zeros(1, 5, dtype=torch.bool)

    def words(seed):  # a sentence nearly orthogonal to every pixel query: tiny components along e0
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(1, 5, c, generator=g)
        w[..., 0] = 0.05 * torch.randn(1, 5, generator=g)
        return w

    blank = constructed_vltf(num_neg_mem=3)
    none = constructed_vltf(num_neg_mem=0)
    with torch.no_grad():
        gathered = {}
        for key, m in (("blank", blank), ("none", none)):
            mem = m.memories(words(1), pad)  # [blank; memory] tokens, normalised
            probs = m.feature_fuse.probs(m.pixel_queries(x), mem)[0, 0]  # (pixels, blank + memory tokens)
            values = m.feature_fuse.fc_v(mem)[0]
            nb = m.cfg.num_neg_mem
            gathered[key] = (probs[:, :nb] @ values[:nb], probs[:, nb:] @ values[nb:], probs)
        fused = {k: m(x, (4, 4), words(1), pad).out for k, m in (("blank", blank), ("none", none))}
    from_blank, from_sentence, probs = gathered["blank"]
    # most of every pixel's attention goes to "nothing", and the sentence's memories make up little of what the
    # pixels gather (the values before fc_o: identity here)
    assert probs[:, :3].sum(-1).min() > 0.9
    assert from_sentence.norm(dim=-1).max() < 0.15 * (from_blank + from_sentence).norm(dim=-1).min()
    # without blank tokens the softmax has only the memories, and InstanceNorm over them blows their tiny
    # alignments with the pixels up to unit scale: every pixel gathers the sentence
    _, from_sentence_none, probs_none = gathered["none"]
    torch.testing.assert_close(probs_none.sum(-1), torch.ones(16))
    assert from_sentence_none.norm(dim=-1).min() > 0.5
    assert not torch.allclose(fused["blank"], fused["none"], atol=1e-3)
    # a sentence along the pixels' direction takes the attention back from the blank tokens
    related = words(1)
    related[..., 0] = 4.0
    with torch.no_grad():
        mem = blank.memories(related, pad)
        probs = blank.feature_fuse.probs(blank.pixel_queries(x), mem)[0, 0]
    assert probs[:, 3:].sum(-1).min() > 0.5


def test_freeze_globs_keep_refsegformers_untrained_bert_parts_frozen():
    globs = ("text_encoder.embeddings.*", "text_encoder.encoder.layer.1.*")  # tiny BERT: 2 layers
    enc = tiny({"name": "vltf"}, freeze=globs)
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    text = {n for n in frozen if n.startswith("text_encoder.")}
    assert text and all(n.startswith(("text_encoder.embeddings.", "text_encoder.encoder.layer.1.")) for n in text)
    assert not any(n.startswith("text_encoder.encoder.layer.0.") for n in frozen)
    # besides them only VLTF's never-run vision->language attention, frozen by construction
    assert frozen - text == {n for n, _ in enc.named_parameters() if ".vision_lan_fuse." in n}
    with pytest.raises(RisbenchError, match="matches no parameter"):
        tiny(freeze=("bert.*",))
