"""Robust RIS (issue 15, items 2-4): the existence head on any model, the forced empty mask at evaluation,
the existence BCE and negatives' weight in the training loss, rris columns in the tables, and the positive /
negative counts of `risbench data check` on an R-RefCOCO layout."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ENCODER_KINDS, build_tiny
from test_refer import REFS, _ref, _sent, write_refer

from risbench import build_model
from risbench.cli.main import main
from risbench.models.segmenter import EMPTY_LOGIT, force_empty
from risbench.train.losses import BceDiceLoss, dice_loss
from risbench.train.optim import optimization_step
from risbench.train.robust_loss import existence_term, mask_loss_terms

TINY = {
    "encoder": {"image_size": 32, "embed_dim": 32, "num_heads": 2, "depth": 2, "out_indices": [1, 2]},
    "fpn": {"dim": 32, "num_heads": 2},
    "decoder": {"num_heads": 2, "head": {"conv_dim": 16}},
}
HEAD = {"name": "pooled", "hidden_dim": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(existence: dict | None = None, seed: int = 0, **sections):
    torch.manual_seed(seed)
    parts = {**TINY, **sections}
    if existence is not None:
        parts["existence"] = existence
    return build_model("shared-ris-tiny", **parts)


def inputs(b: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, 32, 32, generator=g)
    ids = torch.randint(4, 100, (b, 6), generator=g)
    pad = torch.zeros(b, 6, dtype=torch.bool)
    pad[-1, 4:] = True
    return image, ids, pad


def batch_of(b: int = 4, exists: tuple[bool, ...] = (True, False, True, False)) -> dict:
    image, ids, pad = inputs(b)
    mask = torch.zeros(b, 32, 32)
    for i, e in enumerate(exists):
        if e:
            mask[i, 8:20, 4 + i : 16 + i] = 1
    return {"image": image, "text_ids": ids, "text_pad_mask": pad, "mask": mask, "exists": torch.tensor(exists)}


# ------------------------------------------------------------------ the head


@pytest.mark.parametrize("detach", [True, False])
def test_pooled_head_forward_backward(detach: bool) -> None:
    model = tiny({**HEAD, "detach": detach}).train()
    out = model(*inputs())
    assert out.exist_logits is not None and out.exist_logits.shape == (2,)
    existence_term(out.exist_logits, torch.tensor([True, False]), 1.0).backward()
    head = [p.grad for p in model.existence.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in head) and any(g.abs().sum() > 0 for g in head)
    fpn = [p.grad for n, p in model.named_parameters() if n.startswith("fpn.")]
    reached = [g is not None and g.abs().sum() > 0 for g in fpn]
    # detached (the default): the head's loss trains the head only; otherwise it reaches the FPN too
    assert any(reached) is not detach


def test_a_model_without_head_is_the_model_of_today() -> None:
    plain, headed = tiny(), tiny(HEAD)
    assert plain.existence is None and not any(k.startswith("existence.") for k in plain.state_dict())
    assert "existence" not in plain.spec
    shared = {k: v for k, v in headed.state_dict().items() if not k.startswith("existence.")}
    assert shared.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in shared.items())  # the head is built last
    plain.train(), headed.train()
    a, b = plain(*inputs()), headed(*inputs())
    assert a.exist_logits is None and torch.equal(a.logits, b.logits)


def test_head_reads_the_sentence_vector_when_the_fpn_hands_one_on() -> None:
    from risbench.models.existence.pooled import PooledExistenceConfig, PooledExistenceHead
    from risbench.models.interfaces import DecoderOutput

    kind = ENCODER_KINDS["dual_vit"]
    fpn, decoder = build_tiny("detris", "shared", kind)
    feats = kind.features()
    fused = fpn(feats)
    assert "sentence" in fpn.out_spec.traits
    head = PooledExistenceHead(PooledExistenceConfig(), fpn.out_spec, kind.spec)
    out = decoder(fused, feats)
    base = head(fused, feats, out)
    fused.sentence = fused.sentence + 1.0
    assert head.sentence_proj is not None and not torch.allclose(head(fused, feats, out), base)
    without = PooledExistenceHead(PooledExistenceConfig(use_sentence=False), fpn.out_spec, kind.spec)
    assert without.sentence_proj is None and isinstance(out, DecoderOutput)


# ------------------------------------------------------------------ evaluation: the forced empty mask


def test_existence_below_threshold_forces_an_empty_mask() -> None:
    logits = torch.full((2, 1, 4, 4), 3.0)  # both samples predict a full mask
    exist = torch.logit(torch.tensor([0.4, 0.6]))
    forced = force_empty(logits, exist, 0.5)
    assert (torch.sigmoid(forced[0]) == 0).all() and torch.equal(forced[1], logits[1])
    assert torch.equal(force_empty(logits, exist, 0.0), logits)  # threshold 0: never forced


@pytest.mark.parametrize("bias, empty", [(-20.0, True), (20.0, False)])
def test_segmenter_forces_empty_masks_in_eval_mode_only(bias: float, empty: bool) -> None:
    plain, model = tiny().eval(), tiny(HEAD)  # the same weights but for the head
    with torch.no_grad():
        last = model.existence.mlp[-1]
        last.weight.zero_()
        last.bias.fill_(bias)  # existence probability ~0 or ~1 whatever the input
        decoder_logits = plain(*inputs()).logits
        eval_logits = model.eval()(*inputs()).logits
        train_logits = model.train()(*inputs()).logits
    threshold = float(torch.sigmoid(decoder_logits).median())  # the decoder alone predicts half the pixels
    assert (torch.sigmoid(decoder_logits) > threshold).any()
    if empty:  # the prediction changes: nothing is foreground at any mask threshold
        assert (eval_logits == EMPTY_LOGIT).all() and not (torch.sigmoid(eval_logits) > 0).any()
    else:
        assert torch.equal(eval_logits, decoder_logits)
    assert not (train_logits == EMPTY_LOGIT).any()  # training sees the decoder's own logits


def test_threshold_is_an_option_and_bad_values_fail_in_one_line(tmp_path, capsys) -> None:
    model = tiny({**HEAD, "threshold": 0.0})
    assert model.existence.cfg.threshold == 0.0
    cases = [
        ("model.existence.threshold=2", "threshold must be in [0, 1]"),
        ("model.existence.name=poold", "did you mean 'pooled'"),
        ("model.existence.hidden=3", "hidden_dim"),
        ("train.loss.negative_weight=-1", "negative_weight must be a number >= 0"),
        ("train.loss.existence_weight=abc", "existence_weight: expected float"),
    ]
    for override, expected in cases:
        run_dir = tmp_path / "run"
        args = ["train", "configs/tiny-synthref.yaml", "--set", "model.existence.name=pooled", "--set", override]
        assert main([*args, "--run-dir", str(run_dir), "--quiet"]) == 2, override
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (override, err)
        assert not run_dir.exists()


# ------------------------------------------------------------------ training: the loss


def test_negative_weight_one_is_the_loss_of_today_bitwise() -> None:
    torch.manual_seed(0)
    logits, batch = torch.randn(4, 1, 8, 8), batch_of()
    target = F.interpolate(batch["mask"][:, None], size=(8, 8), mode="nearest")
    loss = BceDiceLoss()
    today = loss(logits, target, batch)
    ours = mask_loss_terms(loss, logits, target, batch, 1.0)
    assert ours.keys() == today.keys() and all(torch.equal(ours[k], today[k]) for k in today)


def test_negative_weight_scales_the_negatives_per_sample() -> None:
    torch.manual_seed(0)
    logits, batch = torch.randn(4, 1, 8, 8), batch_of()
    target = F.interpolate(batch["mask"][:, None], size=(8, 8), mode="nearest")
    loss = BceDiceLoss()
    w = 0.4
    terms = mask_loss_terms(loss, logits, target, batch, w)
    weights = torch.where(batch["exists"], 1.0, w)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    dice = torch.stack([dice_loss(torch.sigmoid(logits[i : i + 1]), target[i : i + 1]) for i in range(4)])
    assert terms["bce"].item() == pytest.approx(2.0 * (weights * bce).mean().item(), rel=1e-6)
    assert terms["dice"].item() == pytest.approx(0.5 * (weights * dice).mean().item(), rel=1e-6)
    today = loss(logits, target, batch)
    assert abs(terms["bce"].item() - today["bce"].item()) > 1e-3  # the weight changes the number
    # all-positive batch: the weight has nothing to act on
    pos = {**batch, "exists": torch.ones(4, dtype=torch.bool)}
    assert torch.allclose(mask_loss_terms(loss, logits, target, pos, w)["bce"], today["bce"])


@pytest.mark.parametrize("head, weight", [(None, 1.0), (HEAD, 1.0), (HEAD, 2.5)])
def test_existence_loss_present_only_with_a_head(head, weight) -> None:
    model = tiny(head).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batch = batch_of()
    with torch.no_grad():
        exist_logits = model(batch["image"], batch["text_ids"], batch["text_pad_mask"]).exist_logits
    loss, terms = optimization_step(
        model, model.decoder, BceDiceLoss(), opt, batch, torch.device("cpu"), amp="off", clip_grad=None,
        existence_weight=weight,
    )  # fmt: skip
    if head is None:
        assert "exist" not in terms
    else:
        expected = weight * F.binary_cross_entropy_with_logits(exist_logits, batch["exists"].float())
        assert terms["exist"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert loss.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)


def test_training_run_with_negatives_and_head_reports_rris(tmp_path) -> None:
    from test_train import tiny_config

    from risbench.train.api import train_run

    cfg = tiny_config(tmp_path, max_steps=2, val_every=None)
    cfg["model"] = {**cfg["model"], "existence": {"name": "pooled", "hidden_dim": 8}}
    cfg["data"] = {**cfg["data"], "negative_fraction": 0.5}
    cfg["train"]["loss"] = {"name": "bce_dice", "negative_weight": 0.4, "existence_weight": 0.5}
    run = tmp_path / "run"
    train_run(cfg, run, quiet=True)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("exist" in str(entry) for entry in log)
    metrics = json.loads((run / "metrics.json").read_text())
    val = metrics["splits"]["val"]
    assert val["num_negative"] > 0 and val["rris_r"] is not None and val["rris_rIoU"] is not None
    import yaml

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["loss"]["negative_weight"] == 0.4 and resolved["model"]["existence"]["name"] == "pooled"


# ------------------------------------------------------------------ tables


def test_tables_show_rris_columns_with_seed_intervals(tmp_path: Path) -> None:
    from risbench.runner import tables

    exp = tmp_path / "robust"
    for variant, r in (("plain", 40.0), ("head", 80.0)):
        for seed in (0, 1, 2):
            run = exp / f"{variant}-s{seed}-000000"
            run.mkdir(parents=True)
            (run / "run.json").write_text(json.dumps({"experiment": "robust", "variant": variant, "seed": seed}))
            split = {"oIoU": 60.0, "mIoU": 55.0, "rris_r": r + 2 * seed, "rris_rIoU": 50.0 + seed, "rris_mIoU": 1.0}
            (run / "metrics.json").write_text(json.dumps({"splits": {"val": split}}))
    meta = {
        "name": "robust",
        "variants": ["plain", "head"],
        "table": {"columns": ["oiou", "miou", "rris_r", "rris_riou"], "split": "val", "reference": "plain"},
    }
    (exp / "experiment.json").write_text(json.dumps(meta))
    t = tables.table_for_dir(exp)
    assert t.mean.loc["head", "rris_r"] == pytest.approx(82.0)
    assert t.mean.loc["plain", "rris_riou"] == pytest.approx(51.0)
    half = 4.302652729749464 * 2.0 / np.sqrt(3)  # t_{0.975, 2} * std / sqrt(n)
    assert t.stats.half_width("head", "rris_r") == pytest.approx(half)
    assert t.best()["rris_r"][0] == {"head"}
    from risbench.runner import export

    header = export.render(t, "markdown").splitlines()[0]
    assert "| r |" in header and "| rIoU |" in header, header


# ------------------------------------------------------------------ data check on an R-RefCOCO layout

ROBUST_REFS = [
    *REFS,
    _ref(201, 20, 2, 1, "val", _sent(13, "a giraffe", exist=False), _sent(14, "the boat", exist=False)),
]


def test_data_check_counts_positive_and_negative_sentences(tmp_path, capsys) -> None:
    write_refer(tmp_path, refs=ROBUST_REFS, folder="rrefcoco")
    with open(tmp_path / "rrefcoco" / "refs(unc).p", "rb") as f:
        assert len(pickle.load(f)) == len(ROBUST_REFS)
    assert main(["data", "check", "--dataset", "r-refcoco-unc", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # train: 6 sentences, one of them (sent 5) negative; val: 2 positives (ref 200) and 2 negatives (ref 201)
    assert "train  refs       3  sentences       6  positives       5  negatives       1  images      2" in out
    assert "val    refs       2  sentences       4  positives       2  negatives       2  images      1" in out
    assert "testB  refs       1  sentences       1  positives       1  negatives       0  images      1" in out
    # the plain RefCOCO reading of the same refs drops negatives and prints no such columns
    write_refer(tmp_path, refs=ROBUST_REFS, folder="refcoco")
    assert main(["data", "check", "--dataset", "refcoco-unc", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train  refs       3  sentences       5  images      2" in out and "negatives" not in out
