"""Nothing lost (issue 12, item 1): SIGTERM / Ctrl-C save a checkpoint and print one line saying how to resume;
a sweep SIGKILLed at a random step and run again ends with the metrics and the table bytes of an
uninterrupted sweep."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from test_train import tiny_config

from risbench.cli.main import main
from risbench.config import PROJECT_ROOT
from risbench.train.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "risbench.cli.main", *args],
        cwd=PROJECT_ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _logged_steps(folder: Path) -> int:
    """The training steps logged so far under `folder` (every run's train_log.jsonl)."""
    steps = 0
    for log in folder.rglob("train_log.jsonl"):
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip().endswith("}")]
        steps += max((x["step"] for x in lines if "loss" in x), default=0)
    return steps


def _wait_for(proc: subprocess.Popen, folder: Path, steps: int, timeout: float = 120.0) -> None:
    t0 = time.time()
    while _logged_steps(folder) < steps:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "training did not start"
        time.sleep(0.05)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, max_steps=400, val_every=None, log_every=1)))
    run = tmp_path / "run"
    proc = _cli("train", str(config), "--run-dir", str(run), "--quiet")
    _wait_for(proc, run, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [x for x in err.strip().splitlines() if not x.startswith("beit3: no weights given")]  # an info line
    assert len(lines) == 1, err
    step = load_checkpoint(run / "checkpoints" / "last.pt")["state"]["step"]
    assert 2 <= step < 400
    last = run / "checkpoints" / "last.pt"
    assert lines[0] == (
        f"interrupted: SIGTERM at step {step}: saved {last}; resume with: "
        f"risbench train {config} --run-dir {run} --quiet"
    )
    assert not (run / "metrics.json").exists()


def _sweep_file(tmp_path: Path) -> Path:
    """Two tiny runs of 6 steps each, a checkpoint every 2 steps (and at each epoch end: 3 steps)."""
    base = tiny_config(tmp_path, max_steps=6, val_every=None, ckpt_every=2, log_every=1)
    exp = {
        "name": "killed",
        "base": {k: base[k] for k in ("model", "data", "tokenizer", "train", "eval")},
        "runs": [{"name": "none", "set": {"fpn.name": "none", "fpn.dim": 32}}, {"name": "shared"}],
        "seeds": [0],
        "table": {"split": "val"},
    }
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def _outcome(root: Path) -> dict:
    """What must not depend on the kill: per run its metrics (timings left out) and per-sentence files,
    and the bytes of the table files."""
    out = {}
    for metrics in sorted((root / "runs" / "killed").glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        history = [{k: v for k, v in h.items() if k != "train_seconds"} for h in m["train"]["val_history"]]
        out[metrics.parent.name] = {
            "splits": m["splits"],
            "steps": m["train"]["steps"],
            "best": (m["train"]["best_step"], m["train"]["best_val_oIoU"]),
            "history": history,
            "per_sentence": {p.name: p.read_bytes() for p in metrics.parent.glob("per_sentence.*")},
        }
    for name in ("table.csv", "table.md", "table.tex"):
        out[name] = (root / "results" / "killed" / name).read_bytes()
    return out


def test_a_sweep_killed_at_a_random_step_ends_as_an_uninterrupted_one(tmp_path):
    path = _sweep_file(tmp_path)
    killed = tmp_path / "killed"
    args = ["run", str(path), "--runs-dir", str(killed / "runs"), "--results-dir", str(killed / "results")]
    step = random.Random().randint(1, 11)  # of the sweep's 12 training steps
    proc = _cli(*args, "--gpus", "none")
    _wait_for(proc, killed / "runs", step)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results").exists(), f"the sweep ended before the kill at step {step}"
    assert main([*args, "--gpus", "none"]) == 0  # the dead process's locks hold nobody back

    clean = tmp_path / "clean"
    clean_args = ["run", str(path), "--runs-dir", str(clean / "runs"), "--results-dir", str(clean / "results")]
    assert main([*clean_args, "--gpus", "none"]) == 0
    assert _outcome(killed) == _outcome(clean), f"killed at sweep step {step}"
