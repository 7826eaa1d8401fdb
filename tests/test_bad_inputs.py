"""Bad input to train / eval / predict / run: one line, exit code 2, nothing written (issue 12, item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from risbench.cli.main import main


def _one_line_error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.max_steps=-1", "max_steps must be >= 1"),
        ("train.max_steps=0", "max_steps must be >= 1"),
        ("train.lr=-1", "need lr > 0"),
        ("train.clip_grad=0", "clip_grad must be > 0"),
        ("eval.threshold=2", "threshold must be in [0, 1)"),
    ],
)
def test_train_refuses_nonsense_before_writing(tmp_path, capsys, override, expected):
    run_dir = tmp_path / "run"
    err = _one_line_error(
        capsys, ["train", "configs/tiny-synthref.yaml", "--set", override, "--run-dir", str(run_dir), "--quiet"]
    )
    assert expected in err, err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["eval", "runs/none", "--threshold", "2"], "--threshold must be in [0, 1)"),
        (["predict", "runs/none", "img.png", "the red circle", "--threshold", "-3"], "--threshold must be in [0, 1)"),
        (["predict", "runs/none", "img.png", "   "], "the expression is empty"),
    ],
)
def test_eval_and_predict_refuse_bad_options_before_loading(tmp_path, capsys, args, expected):
    err = _one_line_error(capsys, args)
    assert expected in err, err


def test_experiment_named_dots_is_refused(tmp_path, capsys):
    exp = {"name": "..", "base": {"model": "shared-ris-tiny", "data": "synthref-refcoco+"}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    runs = tmp_path / "deep" / "runs"
    err = _one_line_error(capsys, ["run", str(path), "--runs-dir", str(runs), "--dry-run"])
    assert "not only dots" in err
    assert not (tmp_path / "deep").exists() and not Path(runs.parent / "experiment.json").exists()
