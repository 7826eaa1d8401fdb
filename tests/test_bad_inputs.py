"""Bad input to train / eval / predict / run: one line, exit code 2, nothing written (issue 12, item 7)."""

from __future__ import annotations

import contextlib
import os
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


# ------------------------------------------------------------------------------------------ issue 12, item 7


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _corrupt(data: bytes, how: str) -> bytes:
    if how == "empty":
        return b""
    if how == "truncated":
        return data[: len(data) // 2]
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside a tensor's storage: torch.load alone would not notice
    return bytes(flipped)


@pytest.mark.parametrize("how", ["empty", "truncated", "byte-flipped"])
def test_eval_of_a_broken_checkpoint(trained, tmp_path, capsys, how):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(_corrupt((trained / "checkpoints" / "last.pt").read_bytes(), how))
    before = _files(trained)
    err = _one_line_error(capsys, ["eval", str(trained), "--checkpoint", str(bad)])
    assert str(bad) in err and ("empty" in err or "corrupted" in err), err
    assert _files(trained) == before  # no evals/ file


def test_resume_from_a_broken_last_checkpoint(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "metrics.json").unlink()  # an interrupted run ...
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(_corrupt(last.read_bytes(), "truncated"))  # ... whose last checkpoint was damaged
    err = _one_line_error(capsys, ["train", str(run / "config.yaml"), "--run-dir", str(run), "--quiet"])
    assert str(last) in err and "--no-resume" in err, err
    assert last.is_file() and not (run / "metrics.json").exists()  # the damaged file is kept, not replaced


def test_eval_with_a_checkpoint_of_another_model(trained, tmp_path, capsys):
    import torch

    from risbench.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(trained / "checkpoints" / "last.pt")
    other = {**ckpt, "model": {"w": torch.zeros(2)}}
    other["config"] = {**ckpt["config"], "model": {**ckpt["config"]["model"], "fpn": {"name": "cris"}}}
    save_checkpoint(tmp_path / "other.pt", other)
    before = _files(trained)
    err = _one_line_error(capsys, ["eval", str(trained), "--checkpoint", str(tmp_path / "other.pt")])
    assert "another model: beit3 tiny + fpn cris + decoder shared" in err, err
    assert "this run is beit3 tiny + fpn shared + decoder shared" in err, err
    assert _files(trained) == before


def test_predict_on_a_file_that_is_not_an_image(trained, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    out = tmp_path / "overlay.png"
    err = _one_line_error(capsys, ["predict", str(trained), str(text), "the red circle", "--out", str(out)])
    assert f"{text}: not a readable image" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.fpn.dim=-5", "model.fpn.dim must be >= 1"),
        ("model.fpn.nme=cris", "unknown key 'nme'"),
        ("model.decoder.head.conv_dim=0", "model.decoder.head.conv_dim must be >= 1"),
    ],
)
def test_train_refuses_bad_model_options_before_writing(tmp_path, capsys, override, expected):
    run_dir = tmp_path / "run"
    err = _one_line_error(
        capsys, ["train", "configs/tiny-synthref.yaml", "--set", override, "--run-dir", str(run_dir), "--quiet"]
    )
    assert expected in err, err
    assert not run_dir.exists()


def test_run_refuses_an_unknown_option_path(tmp_path, capsys):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"name": "e", "base": {"model": "shared-ris-tiny", "data": "synthref-refcoco+"}}))
    runs = tmp_path / "runs"
    err = _one_line_error(capsys, ["run", str(path), "--runs-dir", str(runs), "--set", "model.fpn.nme=cris"])
    assert "unknown key 'nme'" in err, err
    assert not runs.exists()


def test_a_run_that_never_started_does_not_block_its_retry(tmp_path, capsys):
    """The first command fails after config.yaml is written (batch larger than the data); the corrected
    command, a different config, trains in the same folder. A folder the failed call created is removed."""
    from test_train import tiny_config

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, max_steps=1, val_every=None, batch_size=64)))
    fresh = tmp_path / "fresh"
    err = _one_line_error(capsys, ["train", str(config), "--run-dir", str(fresh), "--quiet"])
    assert "larger than the training split" in err
    assert not fresh.exists()  # nothing half-written
    prepared = tmp_path / "prepared"  # a folder that existed before (as a sweep prepares it)
    prepared.mkdir()
    assert main(["train", str(config), "--run-dir", str(prepared), "--quiet"]) == 2
    assert (prepared / "config.yaml").is_file()
    capsys.readouterr()
    args = ["train", str(config), "--run-dir", str(prepared), "--quiet", "--set", "train.batch_size=4"]
    assert main(args) == 0, capsys.readouterr().err
    assert (prepared / "metrics.json").is_file()


@contextlib.contextmanager
def _unprivileged():
    """Run the block as user nobody when the tests run as root (root may write into a 0555 folder)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def read_only_dir():
    """A folder nobody may write to, under a folder everybody may enter."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="risbench-ro-"))
    top.chmod(0o755)
    ro = top / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    yield ro
    ro.chmod(0o755)
    shutil.rmtree(top)


def _as_read_only(read_only_dir: Path, monkeypatch):
    """A context in which `read_only_dir` cannot be written: as user nobody when the tests run as root and
    nobody can read the interpreter and the checkout; else (a private /root or checkout folder) root's
    os.access reports the folder as not writable, so the command's own check is what refuses it."""
    from risbench.config import PROJECT_ROOT

    needed = (PROJECT_ROOT / "configs" / "tiny-synthref.yaml", Path(os.__file__), Path(yaml.__file__))
    with _unprivileged():
        nobody_can_run = all(os.access(p, os.R_OK, effective_ids=True) for p in needed)
    if os.geteuid() != 0 or nobody_can_run:
        return _unprivileged()
    real = os.access

    def access(path, mode, *args, **kwargs):
        inside = Path(path).resolve().is_relative_to(read_only_dir.resolve())
        return False if inside and mode & os.W_OK else real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return contextlib.nullcontext()


def test_read_only_output_folder_is_named_before_computing(read_only_dir, capsys, monkeypatch):
    exp = read_only_dir.parent / "e.yaml"
    exp.write_text(yaml.safe_dump({"name": "e", "base": {"model": "shared-ris-tiny", "data": "synthref-refcoco+"}}))
    exp.chmod(0o644)
    other = read_only_dir.parent / "w"  # writable by everybody
    other.mkdir()
    other.chmod(0o777)
    cases = [
        (["train", "configs/tiny-synthref.yaml", "--run-dir", str(read_only_dir / "run"), "--quiet"], "run folder"),
        (["run", str(exp), "--runs-dir", str(read_only_dir / "runs")], "--runs-dir"),
        (["run", str(exp), "--runs-dir", str(other), "--results-dir", str(read_only_dir)], "--results-dir"),
    ]
    for args, what in cases:
        with _as_read_only(read_only_dir, monkeypatch):
            err = _one_line_error(capsys, args)
        assert what in err and "is not writable" in err, err
        assert _files(read_only_dir) == set()
    assert _files(other) == set()


def test_table_names_a_corrupt_metrics_file(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "exp" / "shared-s0-abcdef"
    shutil.copytree(trained, run)
    (run / "metrics.json").write_text('{"splits": {"val": {"oIoU": 5')  # cut off mid-write by hand
    out = tmp_path / "table.md"
    err = _one_line_error(capsys, ["table", str(tmp_path / "exp"), "--out", str(out)])
    assert f"{run / 'metrics.json'}: not readable JSON" in err, err
    assert not out.exists()


@pytest.mark.parametrize("what", ["png", "empty", "binary", "json", "folder"])
def test_data_breakdown_given_the_wrong_file(tmp_path, capsys, what):
    path = tmp_path / "wrong"
    if what == "folder":
        path.mkdir()
    elif what == "png":
        from PIL import Image

        path = tmp_path / "wrong.png"
        Image.new("RGB", (4, 4)).save(path)
    else:
        path.write_bytes({"empty": b"", "binary": bytes(range(256)) * 4, "json": b'{"splits": {}}\n'}[what])
    out = tmp_path / "out.md"
    err = _one_line_error(capsys, ["data", "breakdown", str(path), "--out", str(out)])
    assert str(path) in err and "per-sentence CSV" in err, err
    assert not out.exists()


def test_slurm_backend_without_submitit_names_the_extra_before_preparing(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"name": "e", "base": {"model": "shared-ris-tiny", "data": "synthref-refcoco+"}}))
    runs = tmp_path / "runs"
    err = _one_line_error(capsys, ["run", str(path), "--runs-dir", str(runs), "--backend", "slurm"])
    assert "pip install 'risbench[slurm]'" in err, err
    assert not runs.exists()


# ------------------------------------------------------------------------------------------ issue 12, item 4


def test_a_partial_evaluation_never_replaces_a_full_one(trained, tmp_path, capsys):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["eval", str(run)]) == 0
    full = run / "evals" / "val_t0.35_original.json"
    before = full.read_bytes()
    assert json.loads(before)["splits"]["val"]["num_sentences"] > 1
    assert main(["eval", str(run), "--max-samples", "1"]) == 0
    assert main(["eval", str(run), "--checkpoint", "best"]) == 0
    assert full.read_bytes() == before  # untouched
    partial = json.loads((run / "evals" / "val_t0.35_original_first1.json").read_text())
    assert partial["splits"]["val"]["num_sentences"] == 1
    assert (run / "evals" / "val_t0.35_original_ckpt-best.json").is_file()
    assert (run / "per_sentence.val.csv.gz").read_bytes() == (trained / "per_sentence.val.csv.gz").read_bytes()
    capsys.readouterr()
    err = _one_line_error(capsys, ["eval", str(run), "--max-samples", "0"])
    assert "--max-samples must be >= 1" in err


def test_list_help_names_every_kind_it_accepts(capsys):
    from risbench.cli.listing import known_kinds

    with contextlib.suppress(SystemExit):
        main(["list", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for kind in known_kinds():
        assert kind in out, kind
    assert main(["list", "objectives"]) == 0
    assert "itm_swap" in capsys.readouterr().out
