"""An experiment whose base names `pretrain:`: every run's encoder and tokenizer point at one artifact, the
sweep pretrains once before the first run, --dry-run and --flops-only need no artifact, variants can go
back to random init, and pretraining on the fine-tuning scenes is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

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
