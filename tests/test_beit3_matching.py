"""Image-text matching of `beit3_mdm` (`itm_weight`): negatives made by swapping one word of a class for a
word of another meaning, the data's word classes bound at build time, and the error when a data set has
none."""

from __future__ import annotations

import pytest
import torch

from risbench.errors import IncompatibleError
from risbench.models.encoders.pair_losses import swap_class_words


def test_swap_changes_one_word_of_the_class_to_another_meaning():
    # class words 10, 11 (meaning 0: synonyms), 12 (meaning 1), 13 (meaning 2)
    word_ids, meanings = torch.tensor([10, 11, 12, 13]), torch.tensor([0, 0, 1, 2])
    ids = torch.tensor([[0, 5, 10, 6, 12, 2], [0, 5, 6, 7, 8, 2], [0, 11, 13, 6, 7, 2], [0, 12, 5, 6, 7, 2]])
    rows = torch.tensor([True, True, True, False])
    meaning_of = {10: 0, 11: 0, 12: 1, 13: 2}
    for seed in range(20):
        torch.manual_seed(seed)
        out, changed = swap_class_words(ids, word_ids, meanings, rows)
        # row 1 has no word of the class, row 3 was not asked for
        assert changed.tolist() == [True, False, True, False]
        assert torch.equal(out[1], ids[1]) and torch.equal(out[3], ids[3])
        for r in (0, 2):
            diff = (out[r] != ids[r]).nonzero().flatten().tolist()
            assert len(diff) == 1
            before, after = int(ids[r, diff[0]]), int(out[r, diff[0]])
            assert before in meaning_of and after in meaning_of
            assert meaning_of[before] != meaning_of[after]  # never a synonym of the word it replaces


def test_swap_draws_every_position_and_every_other_meaning():
    word_ids, meanings = torch.tensor([10, 11, 12]), torch.tensor([0, 1, 2])
    ids = torch.tensor([[0, 10, 11, 2]]).repeat(600, 1)
    torch.manual_seed(0)
    out, changed = swap_class_words(ids, word_ids, meanings, torch.ones(600, dtype=torch.bool))
    assert changed.all()
    pairs = {(int(p), int(out[i, p])) for i in range(600) for p in (out[i] != ids[i]).nonzero().flatten()}
    assert pairs == {(1, 11), (1, 12), (2, 10), (2, 12)}


def _raw(tmp_path, data_name: str = "synthref", swap: str = "shape") -> dict:
    encoder = {"image_size": 32, "embed_dim": 32, "num_heads": 2, "depth": 2, "out_indices": [1, 2]}
    data = {"name": "synthref", "num_train": 8, "num_val": 2, "num_test": 2, "image_size": 40, "seed": 1000}
    return {
        "name": "tiny-itm",
        "model": {"preset": "shared-ris-tiny", "encoder": encoder},
        "data": data,
        "objective": {"name": "beit3_mdm", "image_mask_ratio": 0.0, "itm_weight": 0.5, "itm_swap": swap},
        "tokenizer": {"max_len": 24, "vocab_size": 200, "cache_dir": str(tmp_path / "tok")},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 2e-3, "warmup_steps": 1, "log_every": 1, "threads": 1},
    }


def test_pretrain_with_matching_logs_it_and_exports_its_head(tmp_path, monkeypatch):
    from risbench.train.pretrain import pretrain

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    raw = _raw(tmp_path)
    raw["data"]["text"] = "captions"
    art = pretrain(raw, tmp_path / "art", quiet=True)
    curve = art.provenance.loss_curve
    assert all(0.0 <= r["acc_itm"] <= 1.0 and r["loss_itm"] > 0 for r in curve)
    last = curve[-1]
    assert last["loss"] == pytest.approx(last["loss_mlm"] + 0.5 * last["loss_itm"], rel=1e-4)
    sd = torch.load(art.encoder_options["weights"], weights_only=True)["model"]
    assert sd["itm_head.weight"].shape == (2, 32) and sd["itm_head.bias"].shape == (2,)
    from risbench.train.probe import objective_from_artifact

    objective = objective_from_artifact(art.directory)[0]
    assert torch.equal(objective.itm_head.weight, sd["itm_head.weight"])
    assert len(set(objective.class_words["shape"][1].tolist())) == 6  # the 6 shapes


def test_matching_on_a_class_the_data_does_not_name_is_refused(tmp_path, monkeypatch):
    from risbench.train.pretrain import build_objective, tokenizer_cache
    from risbench.train.pretrain_config import resolve_pretrain_config

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    cfg, resolved = resolve_pretrain_config(_raw(tmp_path, swap="texture"))
    with pytest.raises(IncompatibleError, match="'texture'.*colour, shape, size"):
        build_objective(cfg, resolved, tokenizer_cache(cfg))


def test_matching_off_keeps_the_committed_artifacts_keys():
    from risbench.train.pretrain_config import config_hash, load_pretrain_config, resolve_pretrain_config

    raw = load_pretrain_config("beit3-conv-tiny-synthref")
    raw["objective"] = {**raw["objective"], "itm_weight": 0.0, "itm_swap": "shape", "itm_readout": "cls"}
    assert config_hash(resolve_pretrain_config(raw)[1]) == "8a03882dd2bb"
    raw["objective"]["itm_weight"] = 1.0
    assert config_hash(resolve_pretrain_config(raw)[1]) != "8a03882dd2bb"


def test_patch_max_readout_scores_the_best_patch_and_exports_a_one_logit_head(tmp_path, monkeypatch):
    from risbench.models.encoders.beit3_pretrain import Beit3MaskedDataModelling
    from risbench.train.pretrain import pretrain

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    raw = _raw(tmp_path)
    raw["data"]["text"] = "captions"
    raw["objective"]["itm_readout"] = "patch_max"
    art = pretrain(raw, tmp_path / "art", quiet=True)
    last = art.provenance.loss_curve[-1]
    assert last["loss"] == pytest.approx(last["loss_mlm"] + 0.5 * last["loss_itm"], rel=1e-4)
    sd = torch.load(art.encoder_options["weights"], weights_only=True)["model"]
    assert sd["itm_head.weight"].shape == (1, 32)
    from risbench.train.probe import objective_from_artifact

    objective = objective_from_artifact(art.directory)[0]
    assert isinstance(objective, Beit3MaskedDataModelling)
    # the pair's logit is its best patch's score: raise one patch's score and only that pair's loss moves
    enc = objective.encoder
    n = enc.num_vision_tokens
    seq = torch.zeros(2, n + 4, 32)
    seq[0, 3, 0] = 5.0  # a patch of pair 0
    seq[1, 0, 0] = 9.0  # pair 1's CLS, not a patch: a CLS readout would give the pairs 0 and 9
    monkeypatch.setattr(enc, "final_sequence", lambda *a: seq)
    with torch.no_grad():
        objective.itm_head.weight.zero_()
        objective.itm_head.weight[0, 0] = 1.0
        objective.itm_head.bias.zero_()
    monkeypatch.setattr(objective, "_swapped", lambda name, ids, rows: (ids, torch.zeros_like(rows)))  # both match
    ids = torch.zeros(2, 4, dtype=torch.long)
    loss, acc = objective.matching_loss(torch.zeros(2, 3, 32, 32), ids, torch.zeros(2, 4, dtype=torch.bool))
    import math

    expected = (math.log1p(math.exp(-5.0)) + math.log(2.0)) / 2  # pair 0's logit 5, pair 1's 0
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert acc == 0.5


def test_an_unknown_matching_readout_is_refused_with_the_known_ones(tmp_path):
    from risbench.train.pretrain_config import resolve_pretrain_config

    raw = _raw(tmp_path)
    raw["objective"]["itm_readout"] = "patch_mean"
    with pytest.raises(Exception, match="itm_readout.*cls.*patch_max"):
        resolve_pretrain_config(raw)
