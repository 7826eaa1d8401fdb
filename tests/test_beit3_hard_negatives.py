"""NegCLIP's hard negatives in the contrast of `beit3_mdm` (`itc_negatives`): swapped captions as extra image ->
text columns only, the term in a pretraining run, and the option's refusals and cache key."""

from __future__ import annotations

import pytest
import torch
from mdm_configs import tiny_mdm_raw

from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.encoders.pair_losses import multi_positive_info_nce


def test_negatives_are_extra_image_to_text_columns_only():
    torch.manual_seed(0)
    image, text, neg = torch.randn(3, 8), torch.randn(3, 8), torch.randn(2, 8)
    scale = torch.tensor(5.0)
    eye = torch.eye(3, dtype=torch.bool)
    loss, logits = multi_positive_info_nce(image, text, scale, eye, neg)
    assert logits.shape == (3, 5)
    base_loss, base_logits = multi_positive_info_nce(image, text, scale, eye)
    assert torch.allclose(logits[:, :3], base_logits)
    i2t = -logits.log_softmax(1).diagonal().mean()
    t2i = -base_logits.t().log_softmax(1).diagonal().mean()  # the negatives never enter text -> image
    assert torch.allclose(loss, (i2t + t2i) / 2, atol=1e-6)
    assert loss > base_loss  # more columns, more to lose against
    # a negative identical to an image's own caption takes half of that image's probability
    _, same_logits = multi_positive_info_nce(image, text, scale, eye, text[:1])
    assert torch.allclose(same_logits[0, 0], same_logits[0, 3])


def _raw(tmp_path, **objective) -> dict:
    negatives = {"contrastive_weight": 0.5, "itc_negatives": "shape"}
    data = {"text": "objects", "min_objects": 1, "max_objects": 2, "refs_per_scene": 1}
    return tiny_mdm_raw(tmp_path, "tiny-negclip", {**negatives, **objective}, data, max_len=16)


def test_pretrain_with_hard_negatives_logs_how_often_the_own_caption_wins(tmp_path, monkeypatch):
    from risbench.train.pretrain import pretrain

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    art = pretrain(_raw(tmp_path), tmp_path / "art", quiet=True)
    curve = art.provenance.loss_curve
    # 4 captions a batch, each with its shape swapped: acc_neg is a share of 4
    assert all(r["acc_neg"] in (0.0, 0.25, 0.5, 0.75, 1.0) and r["loss_itc"] > 0 for r in curve)
    last = curve[-1]
    assert last["loss"] == pytest.approx(last["loss_mlm"] + 0.5 * last["loss_itc"], rel=1e-4)


def test_hard_negatives_need_the_contrast_and_a_class_the_data_names(tmp_path, monkeypatch):
    from risbench.train.pretrain import build_objective, tokenizer_cache
    from risbench.train.pretrain_config import resolve_pretrain_config

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RisbenchError, match="itc_negatives.*contrastive_weight > 0"):
        resolve_pretrain_config(_raw(tmp_path, contrastive_weight=0.0))
    cfg, resolved = resolve_pretrain_config(_raw(tmp_path, itc_negatives="texture"))
    with pytest.raises(IncompatibleError, match=r"'texture' \(objective.itc_negatives\).*colour, shape, size"):
        build_objective(cfg, resolved, tokenizer_cache(cfg))


def test_no_hard_negatives_keeps_the_committed_artifacts_keys():
    from risbench.train.pretrain_config import config_hash, load_pretrain_config, resolve_pretrain_config

    raw = load_pretrain_config("beit3-conv-tiny-synthref")
    raw["objective"] = {**raw["objective"], "itc_negatives": ""}
    assert config_hash(resolve_pretrain_config(raw)[1]) == "8a03882dd2bb"
