"""An experiment whose base names `pretrain:`: every run's encoder and tokenizer point at one artifact, the
sweep pretrains once before the first run, --dry-run and --flops-only need no artifact, variants can go
back to random init, and pretraining on the fine-tuning scenes is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_dual_pretrain import TINY_DUAL  # the same tiny Swin + BERT

from risbench.cli.main import main
from risbench.runner.experiment import load_experiment

TINY_ENCODER = {"image_size": 32, "embed_dim": 32, "num_heads": 2, "depth": 2, "out_indices": [1, 2]}
TINY_MODEL = {
    "preset": "shared-ris-tiny",
    "encoder": TINY_ENCODER,
    "fpn": {"dim": 32, "num_heads": 2},
    "decoder": {"num_heads": 2, "head": {"conv_dim": 16}},
}
PRETRAIN = {
    "name": "sweep-test",
    "model": {"preset": "shared-ris-tiny", "encoder": TINY_ENCODER},
    "data": {"name": "synthref", "flavour": "refcoco+", "num_train": 8, "image_size": 40, "seed": 1000},
    "tokenizer": {"max_len": 10, "vocab_size": 200},
    "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0, "threads": 1},
}


def experiment(tmp_path: Path, **base) -> Path:
    exp = {
        "name": "pt",
        "base": {
            "pretrain": PRETRAIN,
            "model": TINY_MODEL,
            "data": {
                "name": "synthref",
                "flavour": "refcoco+",
                "num_train": 8,
                "num_val": 2,
                "num_test": 2,
                "image_size": 40,
            },
            "tokenizer": {"max_len": 10, "vocab_size": 200},
            "train": {"max_steps": 2, "batch_size": 4, "val_every": None, "threads": 1, "lr": 1e-3},
            "eval": {"splits": ["val"], "batch_size": 4},
            **base,
        },
        "seeds": [0],
        "runs": [{"name": "scratch", "set": {"encoder.weights": None, "tokenizer.path": None}}, {"name": "shared"}],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CI", "true")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_runs_point_at_the_artifact_and_dry_run_needs_none(tmp_path, capsys):
    exp = load_experiment(experiment(tmp_path))
    ref = exp.pretrain
    assert ref is not None and not ref.exists()
    by_name = {r.variant: r.config for r in exp.runs}
    assert by_name["shared"]["model"]["encoder"]["weights"] == str(ref.directory / "encoder.pth")
    assert by_name["shared"]["tokenizer"]["path"] == str(ref.directory / "tokenizer.model")
    assert by_name["scratch"]["model"]["encoder"]["weights"] is None
    assert main(["run", str(experiment(tmp_path)), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert (
        main(
            [
                "run",
                str(experiment(tmp_path)),
                "--flops-only",
                "--runs-dir",
                str(tmp_path / "runs"),
                "--results-dir",
                str(tmp_path / "results"),
            ]
        )
        == 0
    )
    assert not ref.exists()  # neither pretrained


def test_sweep_pretrains_once_and_fine_tunes_from_it(tmp_path):
    path = experiment(tmp_path)
    args = ["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")]
    assert main(args) == 0
    ref = load_experiment(path).pretrain
    assert ref.exists()
    runs = {
        p.parent.name.split("-s")[0]: json.loads(p.read_text())
        for p in (tmp_path / "runs" / "pt").glob("*/metrics.json")
    }
    assert runs["shared"]["provenance"]["weights"] == str(ref.directory / "encoder.pth")
    assert runs["scratch"]["provenance"]["weights"] == "random"
    exp_meta = json.loads((tmp_path / "runs" / "pt" / "experiment.json").read_text())
    assert exp_meta["pretrain"].startswith("pretrained sweep-test-")
    caption = (tmp_path / "res" / "pt" / "table.md").read_text()
    assert f"{ref.name} (pretrained: beit3_mdm, 2 steps)" in caption and "random" in caption
    stamp = (ref.directory / "pretrain.json").stat().st_mtime_ns
    assert main(args) == 0  # re-run: the artifact and the runs are reused
    assert (ref.directory / "pretrain.json").stat().st_mtime_ns == stamp


def test_pretraining_on_the_fine_tuning_scenes_is_refused(tmp_path, capsys):
    same = {**PRETRAIN, "data": {**PRETRAIN["data"], "seed": 0}}
    path = experiment(tmp_path, pretrain=same)
    assert main(["run", str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is the fine-tuning data" in err


# a run with its own `pretrain:`: another encoder (Swin + BERT) and its own pretraining beside base.pretrain

DUAL_MODEL = {
    "preset": "dual-ris-tiny",
    "encoder": TINY_DUAL,
    "fpn": {"out_channels": [8, 16, 16]},
    "decoder": {"num_heads": 2, "head": {"conv_dim": 16}},
}
DUAL_PRETRAIN = {
    **PRETRAIN,
    "name": "sweep-dual",
    "model": DUAL_MODEL,
    "objective": {"name": "dual_unimodal", "mask_patch_size": 8},
}


def dual_experiment(tmp_path: Path, only: bool = False, **run) -> Path:
    path = experiment(tmp_path)
    exp = yaml.safe_load(path.read_text())
    exp["runs"] = [{"name": "dual", "model": DUAL_MODEL, "pretrain": DUAL_PRETRAIN, **run}]
    exp["runs"] += [] if only else [{"name": "shared"}]
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def test_a_run_with_its_own_pretraining(tmp_path):
    exp = load_experiment(dual_experiment(tmp_path))
    by_name = {r.variant: r for r in exp.runs}
    dual, shared = by_name["dual"], by_name["shared"]
    assert dual.pretrain.name.startswith("sweep-dual-") and shared.pretrain is exp.pretrain
    assert [ref.name for ref in exp.pretrains()] == [dual.pretrain.name, shared.pretrain.name]
    enc = dual.config["model"]["encoder"]
    assert "weights" not in enc and enc["swin_weights"] == str(dual.pretrain.directory / "swin.pth")
    assert enc["bert_path"] == str(dual.pretrain.directory / "bert")
    assert dual.config["tokenizer"]["path"] == str(dual.pretrain.directory / "tokenizer.json")
    assert shared.config["model"]["encoder"]["weights"] == str(exp.pretrain.directory / "encoder.pth")
    # a run's set: still wins over its own pretraining
    back = load_experiment(dual_experiment(tmp_path, set={"encoder.swin_weights": None}))
    assert back.runs[0].config["model"]["encoder"]["swin_weights"] is None


def test_per_run_pretraining_sweep_and_flops_only(tmp_path):
    path = dual_experiment(tmp_path, only=True)  # base.pretrain is named, but no run fine-tunes from it
    runs, res = str(tmp_path / "runs"), str(tmp_path / "res")
    assert main(["run", str(path), "--flops-only", "--runs-dir", runs, "--results-dir", res]) == 0
    exp = load_experiment(path)
    assert [ref.name for ref in exp.pretrains()] == [exp.runs[0].pretrain.name]
    assert not exp.runs[0].pretrain.exists()  # --flops-only pretrains nothing
    assert main(["run", str(path), "--runs-dir", runs, "--results-dir", res]) == 0
    assert exp.runs[0].pretrain.exists() and not exp.pretrain.exists()  # only what a run needs
    metrics = {
        p.parent.name.split("-s")[0]: json.loads(p.read_text())
        for p in (tmp_path / "runs" / "pt").glob("*/metrics.json")
    }
    dual = exp.pretrains()[0]
    assert (
        metrics["dual"]["provenance"]["weights"] == f"swin={dual.directory / 'swin.pth'},bert={dual.directory / 'bert'}"
    )
    caption = (tmp_path / "res" / "pt" / "table.md").read_text()
    assert f"{dual.name} (pretrained: dual_unimodal, 2 steps)" in caption


@pytest.mark.parametrize(
    "run, expected",
    [
        ({"model": None, "pretrain": DUAL_PRETRAIN}, "pretrains encoder 'swin_bert', but the run's encoder is 'beit3'"),
        ({"pretrain": 7}, "runs[dual].pretrain: expected a registry/pretrain/ preset name"),
        ({"pretrain": "no-such-pretraining"}, "runs[dual].pretrain"),
    ],
)
def test_bad_per_run_pretraining_is_one_line_exit_2(tmp_path, capsys, run, expected):
    path = dual_experiment(tmp_path, **run)
    if run.get("model", DUAL_MODEL) is None:  # the base's BEiT-3 model with the dual pretraining
        exp = yaml.safe_load(path.read_text())
        del exp["runs"][0]["model"]
        path.write_text(yaml.safe_dump(exp, sort_keys=False))
    assert main(["run", str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
