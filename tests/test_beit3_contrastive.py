"""BEiT-3's dual-encoder mode and the image-text contrast of `beit3_mdm` (`contrastive_weight`): each modality
alone through its own expert, the multi-positive InfoNCE, the heads in the export, and the cache keys of the
artifacts made before the option existed."""

from __future__ import annotations

import math

import pytest
import torch

from risbench.models.encoders.beit3 import Beit3Config, Beit3Encoder
from risbench.models.encoders.pair_losses import multi_positive_info_nce, symmetric_info_nce

TINY = {"size": "tiny", "image_size": 32, "embed_dim": 32, "num_heads": 2, "depth": 2, "out_indices": (1, 2)}


@pytest.fixture
def encoder() -> Beit3Encoder:
    torch.manual_seed(0)
    return Beit3Encoder(Beit3Config(**TINY, vocab_size=50, drop_path=0.0, init="scratch")).eval()


def test_vision_alone_is_the_joint_sequence_without_text(encoder):
    """With every text token padded, the joint sequence's vision part sees only the image: it must equal the
    image alone through the vision expert."""
    image = torch.randn(2, 3, 32, 32)
    ids = torch.randint(3, 50, (2, 5))
    pad = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        joint = encoder.final_sequence(image, ids, pad)[:, : encoder.num_vision_tokens]
        alone = encoder.unimodal_sequence(image=image)
    assert alone.shape == joint.shape
    assert torch.allclose(alone, joint, atol=1e-5)


def test_text_alone_uses_the_language_expert_and_ignores_padding(encoder):
    ids = torch.randint(3, 50, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    longer = torch.cat([ids, torch.ones(2, 3, dtype=torch.long)], dim=1)
    longer_pad = torch.cat([pad, torch.ones(2, 3, dtype=torch.bool)], dim=1)
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = encoder.unimodal_sequence(text_ids=ids, text_pad_mask=pad)
        padded = encoder.unimodal_sequence(text_ids=longer, text_pad_mask=longer_pad)
        assert torch.allclose(out, padded[:, :6], atol=1e-5)
        vision = encoder.unimodal_sequence(image=image)
        for layer in encoder.encoder.layers:  # the vision expert's weights must not reach text alone
            layer.ffn.A.fc1.weight.mul_(3.0)
            layer.self_attn.q_proj.A.weight.mul_(3.0)
        assert torch.allclose(encoder.unimodal_sequence(text_ids=ids, text_pad_mask=pad), out, atol=1e-6)
        assert not torch.allclose(encoder.unimodal_sequence(image=image), vision, atol=1e-3)


def test_multi_positive_info_nce_is_clip_loss_without_duplicates_and_splits_the_target_with_them():
    torch.manual_seed(1)
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    scale = torch.tensor(10.0)
    eye = torch.eye(4, dtype=torch.bool)
    loss, logits = multi_positive_info_nce(image, text, scale, eye)
    clip, clip_logits = symmetric_info_nce(image, text, scale)
    assert torch.allclose(loss, clip) and torch.allclose(logits, clip_logits)
    # captions 0 and 1 identical: image 0 is as right to pick caption 1 as caption 0
    same = eye.clone()
    same[0, 1] = same[1, 0] = True
    text = text.clone()
    text[1] = text[0]
    loss, logits = multi_positive_info_nce(image, text, scale, same)
    log_p = logits.log_softmax(dim=1)
    row0 = -(log_p[0, 0] + log_p[0, 1]) / 2
    rows = torch.stack([row0, -(log_p[1, 0] + log_p[1, 1]) / 2, -log_p[2, 2], -log_p[3, 3]]).mean()
    log_q = logits.t().log_softmax(dim=1)
    cols = torch.stack([-(log_q[0, 0] + log_q[0, 1]) / 2, -(log_q[1, 0] + log_q[1, 1]) / 2, -log_q[2, 2], -log_q[3, 3]])
    assert torch.allclose(loss, (rows + cols.mean()) / 2, atol=1e-6)


def test_pretrain_with_contrast_exports_the_retrieval_heads(tmp_path, monkeypatch):
    from risbench.models.segmenter import build_model
    from risbench.train.pretrain import pretrain

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    encoder = {"image_size": 32, "embed_dim": 32, "num_heads": 2, "depth": 2, "out_indices": [1, 2]}
    raw = {
        "name": "tiny-contrast",
        "model": {"preset": "shared-ris-tiny", "encoder": encoder},
        "data": {"name": "synthref", "num_train": 8, "num_val": 2, "num_test": 2, "image_size": 40, "seed": 1000},
        "objective": {"name": "beit3_mdm", "image_mask_ratio": 0.25, "contrastive_weight": 0.5},
        "tokenizer": {"max_len": 10, "vocab_size": 200, "cache_dir": str(tmp_path / "tok")},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 2e-3, "warmup_steps": 1, "log_every": 1, "threads": 1},
    }
    art = pretrain(raw, tmp_path / "art", quiet=True)
    curve = art.provenance.loss_curve
    assert all(0.0 <= r["acc_i2t"] <= 1.0 and r["loss_itc"] > 0 for r in curve)
    # the total is the weighted sum of the terms the log gives
    last = curve[-1]
    assert last["loss"] == pytest.approx(last["loss_mlm"] + last["loss_mim"] + 0.5 * last["loss_itc"], rel=1e-4)
    sd = torch.load(art.encoder_options["weights"], weights_only=True)["model"]
    heads = {k for k in sd if not k.startswith("beit3.")}
    assert heads == {
        "mlm_head.weight", "mlm_head.bias", "mim_head.weight", "mim_head.bias",
        "vision_head.weight", "language_head.weight", "logit_scale",
    }  # fmt: skip
    assert sd["vision_head.weight"].shape == (32, 32) and sd["logit_scale"].ndim == 0
    model = build_model("shared-ris-tiny", encoder={**encoder, "weights": art.encoder_options["weights"]})
    assert sorted(model.encoder.load_report.ignored) == sorted(heads)
    # the export loads back into the objective exactly
    from risbench.train.probe import objective_from_artifact

    objective = objective_from_artifact(art.directory)[0]
    assert torch.equal(objective.vision_head.weight, sd["vision_head.weight"])
    assert float(objective.logit_scale) == float(sd["logit_scale"]) != pytest.approx(math.log(1 / 0.07))


def test_contrast_off_keeps_the_committed_artifacts_keys():
    """`contrastive_weight` and `init_temperature` came after the committed artifacts: at their defaults they
    are left out of the hash; a weight above 0 is another pretraining."""
    from risbench.train.pretrain_config import config_hash, load_pretrain_config, resolve_pretrain_config

    raw = load_pretrain_config("beit3-conv-tiny-synthref")
    _, resolved = resolve_pretrain_config(raw)
    assert config_hash(resolved) == "8a03882dd2bb"
    raw["objective"] = {**raw["objective"], "contrastive_weight": 1.0}
    _, other = resolve_pretrain_config(raw)
    assert config_hash(other) != "8a03882dd2bb"
