"""experiments/single_encoder.yaml, the CPU-scale Table VI: a single encoder with multimodal pretraining
against a dual encoder with unimodal pretraining, under control: equal encoder parameters (+-10%), the same
FPN and decoder, equal pretraining (data, steps, batch) and fine-tuning; each row's encoder is the one its
pretraining builds; --dry-run and --flops-only need no artifact."""

from __future__ import annotations

import logging

import pytest

from risbench.config import PROJECT_ROOT
from risbench.runner.experiment import load_experiment
from risbench.train import pretrain

FILE = PROJECT_ROOT / "experiments" / "single_encoder.yaml"


@pytest.fixture(scope="module")
def exp():
    return load_experiment(FILE)


def _rows(exp):
    first = {}
    for run in exp.runs:
        first.setdefault(run.variant, run)
    return first["single_encoder"], first["dual_encoder"]


def _encoder_spec(run):
    enc = dict(run.config["model"]["encoder"])
    for key in run.pretrain.encoder_options:
        enc.pop(key, None)
    return enc


def test_equal_encoder_budgets_same_fpn_and_decoder(exp):
    from risbench.models.segmenter import build_model

    single, dual = _rows(exp)
    assert (
        single.config["model"]["encoder"]["name"] == "beit3" and dual.config["model"]["encoder"]["name"] == "swin_bert"
    )
    assert single.config["model"]["fpn"] == dual.config["model"]["fpn"]
    assert single.config["model"]["decoder"] == dual.config["model"]["decoder"]
    logging.disable(logging.WARNING)
    try:
        models = [build_model({**run.config["model"], "encoder": _encoder_spec(run)}) for run in (single, dual)]
    finally:
        logging.disable(logging.NOTSET)
    params = [sum(p.numel() for p in m.encoder.parameters()) for m in models]
    assert abs(params[1] - params[0]) <= 0.10 * params[0], params
    # the FPN and the decoder see the same grid and width on both
    assert models[0].fpn.out_spec.dim == models[1].fpn.out_spec.dim
    assert models[0].fpn.out_spec.stride == models[1].fpn.out_spec.stride


def test_equal_pretraining_and_fine_tuning(exp):
    from risbench.train.pretrain_config import resolve_pretrain_config

    single, dual = _rows(exp)
    assert (single.pretrain.objective, dual.pretrain.objective) == ("beit3_mdm", "dual_unimodal")
    a, b = (resolve_pretrain_config(run.pretrain.raw)[1] for run in (single, dual))
    assert a["data"] == b["data"] and a["train"] == b["train"] and a["tokenizer"] == b["tokenizer"]
    for key in ("train", "data", "eval"):  # the recipe (loss included), the fine-tuning data, the evaluation
        assert single.config[key] == dual.config[key], key
    without_path = [{k: v for k, v in run.config["tokenizer"].items() if k != "path"} for run in (single, dual)]
    assert without_path[0] == without_path[1]
    assert exp.seeds == [0, 1, 2]
    # each row fine-tunes the very encoder its pretraining built (else its artifact would not load)
    for run, resolved in ((single, a), (dual, b)):
        pretrained = {k: v for k, v in resolved["model"]["encoder"].items() if k not in run.pretrain.encoder_options}
        assert _encoder_spec(run) == pretrained


def test_dry_run_needs_no_artifact(tmp_path, monkeypatch, capsys):
    from risbench.cli.main import main

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))  # the dual pretraining is nowhere:
    monkeypatch.setattr(pretrain, "COMMITTED_DIR", tmp_path / "committed")  # neither cached nor committed
    exp = load_experiment(FILE)
    assert not _rows(exp)[1].pretrain.exists()
    assert main(["run", str(FILE), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "dual_encoder-s2" in capsys.readouterr().out


def test_flops_only_needs_no_artifact(tmp_path, monkeypatch):
    from risbench.cli.main import main

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrain, "COMMITTED_DIR", tmp_path / "committed")
    args = ["run", str(FILE), "--flops-only", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path)]
    assert main(args) == 0
    table = (tmp_path / "single_encoder" / "flops.md").read_text()
    assert "| dual_encoder |" in table and "| single_encoder |" in table
    assert not load_experiment(FILE).pretrains()[0].exists()
