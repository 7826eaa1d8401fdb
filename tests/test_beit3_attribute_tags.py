"""Attribute tags in `beit3_mdm` (`tag_weight`, `tag_classes`): one word class predicted from the max-pooled
patches of the image alone, its meanings scored over their words, the term in a pretraining run, its head in
the export, the errors, and the cache key of the artifacts made before it."""

from __future__ import annotations

import math

import pytest
import torch
from mdm_configs import check_exported_head, tiny_mdm_raw

from risbench.models.encoders.pair_losses import class_tag_loss

# a class of 3 meanings over 4 words: ids 5 and 6 are synonyms (meaning 0), 7 is meaning 1, 8 meaning 2
WORD_IDS, MEANINGS = torch.tensor([5, 6, 7, 8]), torch.tensor([0, 0, 1, 2])


def test_meanings_pool_their_words_and_captions_without_the_class_are_left_out():
    ids = torch.tensor([[0, 6, 9, 2], [0, 9, 9, 2], [0, 7, 8, 2]])  # bos 0, eos 2; 9 is another class's word
    words = torch.tensor([[False, True, True, False]] * 3)
    logits = torch.zeros(3, 12)
    loss, acc = class_tag_loss(logits, ids, words, WORD_IDS, MEANINGS)
    # row 0 names meaning 0 (two words: log 2 of the 4 words' mass), row 2 names meanings 1 and 2 (half each)
    p0 = 2 / 4
    expected = (-math.log(p0) + (-math.log(1 / 4))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    logits[0, 5] = 40.0  # the synonym the caption did not use still counts for its meaning
    logits[2, 7] = logits[2, 8] = 40.0
    loss, acc = class_tag_loss(logits, ids, words, WORD_IDS, MEANINGS)
    assert float(loss) == pytest.approx(math.log(2) / 2, abs=1e-4) and acc == 1.0
    logits[0, 5], logits[0, 8] = 0.0, 40.0  # row 0 now votes for a meaning it does not name
    assert class_tag_loss(logits, ids, words, WORD_IDS, MEANINGS)[1] == 0.5


def test_a_batch_without_the_class_costs_nothing_and_keeps_the_graph():
    logits = torch.zeros(2, 12, requires_grad=True)
    ids, words = torch.tensor([[0, 9, 2]] * 2), torch.tensor([[False, True, False]] * 2)
    loss, acc = class_tag_loss(logits, ids, words, WORD_IDS, MEANINGS)
    loss.backward()
    assert float(loss) == 0.0 and acc == 0.0 and logits.grad is not None


def _raw(tmp_path, **objective) -> dict:
    tags = {"tag_weight": 0.5, "tag_classes": ["shape", "colour"]}
    return tiny_mdm_raw(tmp_path, "tiny-tags", {**tags, **objective})


def test_pretrain_with_tags_logs_them_and_exports_the_head(tmp_path, monkeypatch):
    from risbench.train.pretrain import pretrain

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    art = pretrain(_raw(tmp_path), tmp_path / "art", quiet=True)
    last = art.provenance.loss_curve[-1]
    assert last["loss"] == pytest.approx(last["loss_mlm"] + 0.5 * last["loss_tag"], rel=1e-4)
    assert {"acc_tag_shape", "acc_tag_colour"} <= set(last)
    check_exported_head(art, "tag_head", 32)


def test_tags_read_the_image_alone_and_only_its_patches(tmp_path, monkeypatch):
    """No word of the caption reaches the head, and neither does the image CLS."""
    from risbench.data.collate import Collator
    from risbench.train.pretrain import build_objective, tokenizer_cache
    from risbench.train.pretrain_config import resolve_pretrain_config

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    cfg, resolved = resolve_pretrain_config(_raw(tmp_path))
    objective, tokenizer, dataset = build_objective(cfg, resolved, tokenizer_cache(cfg))
    batch = Collator(tokenizer, cfg.tokenizer.max_len)([dataset[i] for i in range(4)])
    alone = objective.encoder.unimodal_sequence(image=batch["image"]).detach().requires_grad_(True)
    words = ~batch["text_pad_mask"] & (batch["text_ids"] > 2)
    loss, logs = objective.tag_loss(alone, batch["text_ids"], words)
    loss.backward()
    assert float(loss) > 0 and 0.0 <= logs["acc_tag_shape"] <= 1.0
    assert float(alone.grad[:, 0].abs().sum()) == 0.0 and float(alone.grad[:, 1:].abs().sum()) > 0.0


def test_bad_tag_options_name_the_fix(tmp_path, monkeypatch):
    from risbench.errors import IncompatibleError
    from risbench.models.encoders.beit3_pretrain import Beit3MdmConfig
    from risbench.train.pretrain import build_objective, tokenizer_cache
    from risbench.train.pretrain_config import resolve_pretrain_config

    with pytest.raises(ValueError, match="tag_classes"):
        Beit3MdmConfig(tag_weight=1.0)
    with pytest.raises(ValueError, match="tag_weight"):
        Beit3MdmConfig(tag_weight=-1.0, tag_classes=("shape",))
    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    cfg, resolved = resolve_pretrain_config(_raw(tmp_path, tag_classes=["shape", "texture"]))
    with pytest.raises(IncompatibleError, match=r"'texture' \(objective.tag_classes\).*colour, shape, size"):
        build_objective(cfg, resolved, tokenizer_cache(cfg))


def test_no_tags_keep_the_committed_artifacts_keys():
    from risbench.train.pretrain_config import config_hash, load_pretrain_config, resolve_pretrain_config

    raw = load_pretrain_config("beit3-conv-tiny-synthref")
    raw["objective"] = {**raw["objective"], "tag_weight": 0.0, "tag_classes": []}
    assert config_hash(resolve_pretrain_config(raw)[1]) == "8a03882dd2bb"


def test_a_meaning_the_tokenizer_split_away_is_no_class_at_all():
    """A meaning whose words are all split into pieces has no id: it must not become a column of -inf."""
    ids, words = torch.tensor([[0, 7, 2]]), torch.tensor([[False, True, False]])
    loss, acc = class_tag_loss(torch.zeros(1, 12), ids, words, torch.tensor([5, 7]), torch.tensor([0, 2]))
    assert float(loss) == pytest.approx(math.log(2)) and acc in (0.0, 1.0)
