"""`risbench run` reuses a finished run of another experiment with the same config hash (`--no-reuse`: not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_runner import FakeTrainer, experiment, fake_flops, run_args, write

from risbench.cli.main import main
from risbench.runner import backends
from risbench.runner.experiment import load_experiment
from risbench.runner.reuse import REUSED_FILE


@pytest.fixture
def trainer(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    fake = FakeTrainer()
    monkeypatch.setattr(backends, "_train_fn", lambda: fake)
    monkeypatch.setattr(backends, "measure_flops", fake_flops)
    monkeypatch.setenv("CI", "true")
    return fake


def two_experiments(tmp_path: Path) -> tuple[Path, Path]:
    """`mini` (none, shared) and `other`, whose `proposed` row is mini's `shared` under another name."""
    first = write(tmp_path / "a.yaml", experiment())
    other = experiment(name="other", runs=[{"name": "proposed"}, {"name": "deeper", "set": {"decoder.num_layers": 2}}])
    return first, write(tmp_path / "b.yaml", other)


def test_same_config_in_another_experiment_is_reused(tmp_path: Path, trainer: FakeTrainer) -> None:
    first, second = two_experiments(tmp_path)
    assert main(run_args(first, tmp_path, "--gpus", "none", "--no-plots")) == 0
    trainer.calls.clear()
    assert main(run_args(second, tmp_path, "--dry-run")) == 0
    assert main(run_args(second, tmp_path, "--gpus", "none", "--no-plots")) == 0
    runs = {r.variant: [] for r in load_experiment(second).runs}
    configs = {r.run_id: r.config for r in load_experiment(second).runs}
    for r in load_experiment(second).runs:
        runs[r.variant].append(r.run_id)
    assert sorted(trainer.calls) == sorted(runs["deeper"])  # `proposed` was taken from mini's `shared`
    for run_id in runs["proposed"]:
        target = tmp_path / "runs" / "other" / run_id
        source = tmp_path / "runs" / "mini" / run_id.replace("proposed", "shared")
        assert json.loads((target / "metrics.json").read_text()) == json.loads((source / "metrics.json").read_text())
        assert json.loads((target / REUSED_FILE).read_text())["source"] == str(source)
        assert yaml.safe_load((target / "config.yaml").read_text()) == configs[run_id]  # its own, not the source's
        assert json.loads((target / "run.json").read_text())["variant"] == "proposed"
    table = (tmp_path / "results" / "other" / "table.csv").read_text()
    assert table.splitlines()[1].startswith("proposed,") and ",60.5," in table  # the shared runs' 60 and 61

    trainer.calls.clear()
    assert main(run_args(second, tmp_path, "--gpus", "none", "--no-plots")) == 0
    assert trainer.calls == []


def test_no_reuse_trains_and_the_dry_run_says_what_would_be_reused(
    tmp_path: Path, trainer: FakeTrainer, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = two_experiments(tmp_path)
    assert main(run_args(first, tmp_path, "--gpus", "none", "--no-plots")) == 0
    capsys.readouterr()
    assert main(run_args(second, tmp_path, "--dry-run")) == 0
    assert capsys.readouterr().out.count("reusable") == 2
    trainer.calls.clear()
    assert main(run_args(second, tmp_path, "--gpus", "none", "--no-plots", "--no-reuse")) == 0
    assert len(trainer.calls) == 4
    assert not list((tmp_path / "runs" / "other").glob(f"*/{REUSED_FILE}"))


def test_a_source_whose_config_does_not_match_its_hash_is_not_reused(tmp_path: Path, trainer: FakeTrainer) -> None:
    first, second = two_experiments(tmp_path)
    assert main(run_args(first, tmp_path, "--gpus", "none", "--no-plots")) == 0
    for cfg in (tmp_path / "runs" / "mini").glob("shared-*/config.yaml"):
        cfg.write_text(cfg.read_text().replace("max_steps: 2", "max_steps: 3"))
    trainer.calls.clear()
    assert main(run_args(second, tmp_path, "--gpus", "none", "--no-plots")) == 0
    assert len(trainer.calls) == 4


def test_an_unfinished_source_is_not_reused(
    tmp_path: Path, trainer: FakeTrainer, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = two_experiments(tmp_path)
    assert main(run_args(first, tmp_path, "--gpus", "none", "--no-plots")) == 0
    for metrics in (tmp_path / "runs" / "mini").glob("shared-*/metrics.json"):
        metrics.unlink()
    trainer.calls.clear()
    capsys.readouterr()
    assert main(run_args(second, tmp_path, "--gpus", "none", "--no-plots")) == 0
    assert len(trainer.calls) == 4
    assert "reused" not in capsys.readouterr().out
