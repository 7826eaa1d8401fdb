"""Attention maps (text tokens -> image patches): the weights that components keep are the ones their
forward applies, keeping them changes no output, and components without such attention keep nothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from risbench import build_model
from risbench.models.layers import Attention, attention_probs

TINY = {
    "encoder": {"image_size": 32, "embed_dim": 32, "num_heads": 2, "depth": 2, "out_indices": [1, 2]},
    "fpn": {"dim": 32, "num_heads": 2},
    "decoder": {"num_heads": 2, "head": {"conv_dim": 16}},
}


def test_attention_probs_are_the_weights_sdpa_applies() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False  # two padded keys in the second sample
    probs = attention_probs(q, k, 2, mask)
    heads = lambda t: t.view(2, t.shape[1], 2, 4).transpose(1, 2)
    expected = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    assert torch.allclose(probs @ heads(v), expected, atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 5)) and (probs[1, ..., 5:] == 0).all()
    attn = Attention(8, 2)
    assert attn.probs(q, k, mask).shape == (2, 2, 5, 7)


def test_shared_ris_keeps_encoder_and_fpn_maps_without_changing_its_output() -> None:
    torch.manual_seed(0)
    model = build_model("shared-ris-tiny", **TINY).eval()
    image, ids = torch.randn(1, 3, 32, 32), torch.randint(4, 100, (1, 6))
    pad = torch.zeros(1, 6, dtype=torch.bool)
    pad[0, 5] = True
    with torch.no_grad():
        before = model(image, ids, pad).logits
        for part in (model.encoder, model.fpn, model.decoder):
            part.keep_attention(True)
        after = model(image, ids, pad).logits
    assert torch.equal(before, after)
    enc, fpn = model.encoder.attention_maps(), model.fpn.attention_maps()
    grid = model.encoder.grid  # 32 px at the tiny preset's patch size
    assert list(enc) == ["encoder layer 1", "encoder layer 2"] and list(fpn) == ["fpn stage 1", "fpn stage 2"]
    for maps in (*enc.values(), *fpn.values()):
        assert maps.shape == (1, 6, grid, grid)
        assert (maps >= 0).all() and (maps.sum(dim=(-1, -2)) <= 1 + 1e-6).all()  # a share of each word's softmax
    assert model.decoder.attention_maps() == {}  # the Shared decoder keeps none
    model.encoder.keep_attention(False)
    with torch.no_grad():
        model(image, ids, pad)
    assert model.encoder.attention_maps() == {}
