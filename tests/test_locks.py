"""No two writers (issue 12, item 3): a run another live process trains is never trained here too; the
sweep leaves it and takes it up once it is released; a lock left by a dead process (SIGKILL) is free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from test_runner import FakeTrainer, experiment, fake_flops, run_args, write

from risbench.cli.main import main
from risbench.config import PROJECT_ROOT
from risbench.runner import backends
from risbench.runner.experiment import load_experiment
from risbench.runner.sweep import prepare_runs
from risbench.train.lock import held_by_other, run_lock

HOLD = """import sys, time
from risbench.train.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold(run_dir: Path) -> subprocess.Popen:
    """Another process that holds the lock of `run_dir` until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_held_by_a_live_process_is_refused_and_a_dead_holder_is_detected(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        assert held_by_other(run)["pid"] == holder.pid
        assert main(["train", "configs/tiny-synthref.yaml", "--run-dir", str(run), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"is being trained by pid {holder.pid} on " in err, err
        assert not (run / "config.yaml").exists()  # nothing written by the refused process
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock
        holder.wait()
    assert held_by_other(run) is None  # the kernel released it: a dead holder blocks nobody
    with run_lock(run):
        assert held_by_other(run) is None  # re-entrant in this process, and taken
        with run_lock(run):
            pass


def test_two_sweeps_split_the_runs(tmp_path, monkeypatch):
    """While another process holds the first run, this sweep trains the second, waits, then takes the first
    over when its holder dies: every run trained once here, in that order, and the table is complete."""
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(backends, "LOCK_POLL_S", 0.05)
    fake = FakeTrainer()
    monkeypatch.setattr(backends, "_train_fn", lambda: fake)
    monkeypatch.setattr(backends, "measure_flops", fake_flops)
    path = write(tmp_path / "e.yaml", experiment(seeds=[0]))
    exp = load_experiment(path)
    first, second = prepare_runs(exp, exp.runs, tmp_path / "runs")
    holder = _hold(first)

    def release_after_second() -> None:
        while not (second / "metrics.json").is_file():
            threading.Event().wait(0.05)
        os.kill(holder.pid, signal.SIGKILL)

    killer = threading.Thread(target=release_after_second, daemon=True)
    killer.start()
    try:
        assert main(run_args(path, tmp_path, "--gpus", "none")) == 0
    finally:
        holder.kill()
        holder.wait()
    assert fake.calls == [second.name, first.name]
    table = (tmp_path / "results" / "mini" / "table.csv").read_text()
    assert table.count("\n") == 3  # header + both rows


def test_the_lock_file_names_its_holder(tmp_path):
    from risbench.train.lock import holder

    with run_lock(tmp_path / "r"):
        info = holder(tmp_path / "r")
        assert info["pid"] == os.getpid() and info["command"].startswith("risbench")
