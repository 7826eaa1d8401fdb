"""SuperClass's image-level bag of words in `beit3_mdm` (`bow_weight`): the spread target over a caption's
distinct words, the term in a pretraining run from the image alone, its head in the export, and the cache key
of the artifacts made before it."""

from __future__ import annotations

import math

import pytest
import torch
from mdm_configs import check_exported_head, tiny_mdm_raw

from risbench.models.encoders.pair_losses import bag_of_words_loss, max_pooled_words_loss


def test_target_spreads_evenly_over_the_distinct_words_of_the_caption():
    ids = torch.tensor([[0, 5, 7, 5, 2, 1], [0, 6, 2, 1, 1, 1]])  # bos 0, eos 2, pad 1
    words = torch.tensor([[False, True, True, True, False, False], [False, True, False, False, False, False]])
    logits = torch.zeros(2, 10)
    # uniform logits: -log(1/10) whatever the target
    assert float(bag_of_words_loss(logits, ids, words)) == pytest.approx(math.log(10))
    logits[0, 5] = logits[0, 7] = 50.0  # the two distinct words of caption 0, each at half
    logits[1, 6] = 50.0
    assert float(bag_of_words_loss(logits, ids, words)) == pytest.approx(math.log(2) / 2, abs=1e-4)
    logits[0, 7] = 0.0  # a repeated word counts once: all mass on 5 leaves 7 unpredicted
    assert float(bag_of_words_loss(logits, ids, words)) > 10.0


def test_a_word_at_id_zero_is_a_word_and_special_tokens_are_not():
    ids = torch.tensor([[3, 0, 2]])
    words = torch.tensor([[False, True, False]])
    logits = torch.full((1, 4), -50.0)
    logits[0, 0] = 50.0
    assert float(bag_of_words_loss(logits, ids, words)) == pytest.approx(0.0, abs=1e-6)


def _raw(tmp_path) -> dict:
    return tiny_mdm_raw(tmp_path, "tiny-bow", {"bow_weight": 0.5})


def test_pretrain_with_bag_of_words_logs_it_and_exports_its_head(tmp_path, monkeypatch):
    from risbench.train.pretrain import pretrain

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    art = pretrain(_raw(tmp_path), tmp_path / "art", quiet=True)
    last = art.provenance.loss_curve[-1]
    assert last["loss"] == pytest.approx(last["loss_mlm"] + 0.5 * last["loss_bow"], rel=1e-4)
    check_exported_head(art, "bow_head", 32)


def test_the_image_alone_feeds_the_bag_of_words(tmp_path, monkeypatch):
    """The head reads the image CLS of the vision expert alone: no word of the caption reaches it."""
    from risbench.data.collate import Collator
    from risbench.train.pretrain import build_objective, tokenizer_cache
    from risbench.train.pretrain_config import resolve_pretrain_config

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    cfg, resolved = resolve_pretrain_config(_raw(tmp_path))
    objective, tokenizer, dataset = build_objective(cfg, resolved, tokenizer_cache(cfg))
    calls = []
    alone = objective.encoder.unimodal_sequence

    def spy(**kwargs):
        calls.append(sorted(k for k, v in kwargs.items() if v is not None))
        return alone(**kwargs)

    monkeypatch.setattr(objective.encoder, "unimodal_sequence", spy)
    batch = Collator(tokenizer, cfg.tokenizer.max_len)([dataset[i] for i in range(4)])
    _, logs = objective(batch)
    assert calls == [["image"]] and logs["loss_bow"] > 0
    with pytest.raises(ValueError, match="bow_weight"):
        type(objective.cfg)(bow_weight=-1.0)


def test_no_bag_of_words_keeps_the_committed_artifacts_keys():
    from risbench.train.pretrain_config import config_hash, load_pretrain_config, resolve_pretrain_config

    raw = load_pretrain_config("beit3-conv-tiny-synthref")
    raw["objective"] = {**raw["objective"], "bow_weight": 0.0}
    assert config_hash(resolve_pretrain_config(raw)[1]) == "8a03882dd2bb"


def test_max_pooled_tags_need_one_patch_per_present_word_and_none_for_the_absent():
    ids = torch.tensor([[0, 5, 7, 2]])
    words = torch.tensor([[False, True, True, False]])
    logits = torch.full((1, 3, 9), -30.0)  # 3 patches, vocab 9: nothing shown anywhere
    # the two present words unexplained: about 30 nats each, the absent ones about 0
    assert float(max_pooled_words_loss(logits, ids, words)) == pytest.approx(60.0, abs=1e-3)
    logits[0, 1, 5] = logits[0, 2, 7] = 30.0  # one patch for each present word is enough
    assert float(max_pooled_words_loss(logits, ids, words)) == pytest.approx(0.0, abs=1e-3)
    logits[0, 0, 3] = 30.0  # one patch showing an absent word costs it
    assert float(max_pooled_words_loss(logits, ids, words)) == pytest.approx(30.0, abs=1e-3)
    # the gradient reaches only the patch that holds each word's maximum
    logits = torch.zeros(1, 3, 9, requires_grad=True)
    with torch.no_grad():
        logits[0, 2, 5] = 1.0
    max_pooled_words_loss(logits, ids, words).backward()
    assert logits.grad[0, :, 5].nonzero().flatten().tolist() == [2]


def test_max_pooled_bag_of_words_trains_from_the_patches(tmp_path, monkeypatch):
    from risbench.models.encoders.beit3_pretrain import Beit3MdmConfig
    from risbench.train.pretrain import pretrain

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    raw = _raw(tmp_path)
    raw["objective"]["bow_pool"] = "max"
    art = pretrain(raw, tmp_path / "art", quiet=True)
    last = art.provenance.loss_curve[-1]
    assert last["loss"] == pytest.approx(last["loss_mlm"] + 0.5 * last["loss_bow"], rel=1e-4)
    with pytest.raises(ValueError, match="cls, max"):
        Beit3MdmConfig(bow_weight=1.0, bow_pool="mean")
