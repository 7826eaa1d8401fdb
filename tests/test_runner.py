"""`risbench run`: experiment files (expansion, ids, validation), backends (local, print, slurm), re-runs."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from risbench.cli.main import main
from risbench.config import PROJECT_ROOT
from risbench.runner import backends
from risbench.runner.experiment import load_experiment
from risbench.runner.progress import SweepProgress
from risbench.train.codeversion import FLOPS_ROOTS, code_version

TINY_DATA = {"preset": "synthref-refcoco+", "num_train": 32, "num_val": 8, "num_test": 8}
TINY_TRAIN = {"max_steps": 2, "batch_size": 4, "log_every": 1, "val_every": None}


def experiment(**changes: Any) -> dict[str, Any]:
    exp = {
        "name": "mini",
        "base": {
            "model": "shared-ris-tiny",
            "data": dict(TINY_DATA),
            "train": dict(TINY_TRAIN),
            "eval": {"splits": ["val"], "batch_size": 8},
        },
        "seeds": [0, 1],
        "runs": [
            {"name": "none", "set": {"fpn.name": "none", "fpn.dim": 128}},
            {"name": "shared"},
        ],
        "table": {"mirrors": "IV", "cost": "fpn", "split": "val"},
    }
    exp.update(changes)
    return exp


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class FakeTrainer:
    """Stands in for risbench.train.api.train_run: writes a metrics.json computed from the run's variant."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on_call = fail_on_call

    def __call__(self, cfg: dict, run_dir: Path, *, quiet: bool = False, resume: bool = True) -> dict:
        run_dir = Path(run_dir)
        self.calls.append(run_dir.name)
        (run_dir / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt  # the sweep is killed while this run trains
        fpn = cfg["model"]["fpn"]["name"]
        oiou = {"none": 50.0, "shared": 60.0}.get(fpn, 40.0) + cfg["seed"]
        metrics = {
            "splits": {"val": {"oIoU": oiou, "mIoU": oiou + 1, "P@0.5": 70.0, "P@0.7": 40.0, "P@0.9": 5.0}},
            "provenance": {"code_version": code_version(cfg), "precision": "fp32"},  # as train_run records it
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


def fake_flops(cfg: dict) -> dict:
    fpn = {"none": 0.05e6, "shared": 0.5e6}.get(cfg["model"]["fpn"]["name"], 1e6)
    comps = {"encoder": {"params": 4e6, "flops": 1e9}, "fpn": {"params": fpn, "flops": fpn * 100}, "decoder": {}}
    return {"components": comps, "total": {"params": 4e6 + fpn, "flops": 1e9}, "input": {"text_len": 20}}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    trainer = FakeTrainer()
    monkeypatch.setattr(backends, "_train_fn", lambda: trainer)
    monkeypatch.setattr(backends, "measure_flops", fake_flops)
    return trainer


def run_args(path: Path, tmp: Path, *extra: str) -> list[str]:
    return ["run", str(path), "--runs-dir", str(tmp / "runs"), "--results-dir", str(tmp / "results"), *extra]


# ------------------------------------------------------------------------------------------ expansion


def test_expansion_runs_grid_seeds(tmp_path: Path) -> None:
    path = write(tmp_path / "e.yaml", experiment(grid={"decoder.num_layers": [1, 2, 3]}))
    exp = load_experiment(path)
    assert len(exp.runs) == 2 * 3 * 2
    assert exp.variants == [f"{r}-num_layers{n}" for r in ("none", "shared") for n in (1, 2, 3)]
    run = exp.runs[0]
    assert run.run_id.startswith("none-num_layers1-s0-") and len(run.config_hash) == 6
    assert run.config["model"]["decoder"]["num_layers"] == 1 and run.config["seed"] == 0
    assert exp.runs[1].seed == 1 and exp.runs[1].config_hash != run.config_hash
    # ids are stable across invocations; any change of the config changes the hash
    assert [r.run_id for r in load_experiment(path).runs] == [r.run_id for r in exp.runs]
    changed = load_experiment(path, ["train.max_steps=3"])
    assert all(a.run_id != b.run_id for a, b in zip(exp.runs, changed.runs, strict=True))
    assert all(r.config["train"]["max_steps"] == 3 for r in changed.runs)


def test_run_ids_do_not_depend_on_where_the_checkout_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """A path inside the project (a committed pretrained encoder) counts relative to the project, so a run
    has the same id in a clone elsewhere; a path outside it counts as it is."""
    from risbench.runner import experiment

    def cfg(root: str, other: str = "/data/refer") -> dict:
        return {"model": {"encoder": {"weights": f"{root}/pretrained/enc-abc/encoder.pth"}}, "data": {"root": other}}

    monkeypatch.setattr(experiment, "PROJECT_ROOT", Path("/work/main"))
    here = experiment.config_hash(cfg("/work/main"))
    assert experiment.config_hash(cfg("/work/main", "/data/other")) != here
    monkeypatch.setattr(experiment, "PROJECT_ROOT", Path("/tmp/clone"))
    assert experiment.config_hash(cfg("/tmp/clone")) == here
    assert experiment.config_hash(cfg("/work/main")) != here  # outside this checkout: another file


def test_component_rename_drops_old_options(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path / "e.yaml", experiment()))
    none = exp.runs[0].config["model"]["fpn"]
    assert none == {"name": "none", "dim": 128}  # the Shared FPN's num_heads did not travel along
    shared = exp.runs[2].config["model"]["fpn"]
    assert shared["name"] == "shared" and shared["num_heads"] == 4


def test_nested_sections_in_runs(tmp_path: Path) -> None:
    runs = [
        {"name": "pwam", "model": {"fpn": {"name": "pwam", "dim": 96}}, "train": {"lr": 0.5}},
        {"name": "base"},
    ]
    exp = load_experiment(write(tmp_path / "e.yaml", experiment(runs=runs, seeds=[0])))
    pwam, base = (r.config for r in exp.runs)
    assert pwam["model"]["fpn"] == {"name": "pwam", "dim": 96} and pwam["train"]["lr"] == 0.5
    assert base["model"]["fpn"]["name"] == "shared" and base["train"]["lr"] != 0.5  # runs do not leak


def test_run_with_a_model_preset(tmp_path: Path) -> None:
    runs = [{"name": "tiny", "model": "shared-ris-tiny"}, {"name": "b", "model": {"preset": "shared-ris-b"}}]
    exp = load_experiment(write(tmp_path / "e.yaml", experiment(runs=runs, seeds=[0])))
    tiny, b = (r.config["model"] for r in exp.runs)
    assert tiny["encoder"]["size"] == "tiny" and b["encoder"]["size"] == "base"


def test_run_with_its_own_recipe(tmp_path: Path) -> None:
    """A run's `recipe:` replaces the base's recipe and the base's tokenizer/train/eval keys; its own sections
    go on top; the other runs keep the base's."""
    base = {**experiment()["base"], "recipe": "cpu-finetune", "train": {"max_steps": 2, "lr": 0.123}}
    runs = [
        {"name": "own", "recipe": "refsegformer", "train": {"max_steps": 3}},
        {"name": "base"},
    ]
    exp = load_experiment(write(tmp_path / "e.yaml", experiment(base=base, runs=runs, seeds=[0])))
    own, plain = (r.config for r in exp.runs)
    assert own["train"]["lr"] == 3.0e-5 and own["train"]["schedule"] == "poly"  # the run's recipe, not the base's lr
    assert own["train"]["max_steps"] == 3 and own["eval"]["threshold"] == 0.5
    assert own["train"]["loss"]["name"] == "refsegformer_ce" and own["data"] == plain["data"]
    assert plain["train"]["lr"] == 0.123 and plain["train"]["max_steps"] == 2 and plain["eval"]["threshold"] == 0.35


BROKEN = {
    "unknown run recipe": ({"runs": [{"name": "a", "recipe": "refsegformr"}]}, "did you mean"),
    "unknown top-level key": ({"sedes": [0]}, "sedes"),
    "unknown run key": ({"runs": [{"name": "a", "sett": {"fpn.name": "none"}}]}, "sett"),
    "unknown component": ({"runs": [{"name": "a", "set": {"fpn.name": "crs"}}]}, "model.fpn.name"),
    "unknown component option": ({"runs": [{"name": "a", "set": {"fpn.dimm": 3}}]}, "dimm"),
    "unknown section in set": ({"runs": [{"name": "a", "set": {"trian.epochs": 3}}]}, "trian"),
    "grid over a missing key": ({"grid": {"train.not_a_key": [1, 2]}}, "train.not_a_key"),
    "grid over a missing option": ({"grid": {"decoder.layers": [1, 2]}}, "decoder.layers"),
    "duplicate run names": ({"runs": [{"name": "a"}, {"name": "a"}]}, "'a'"),
    "unknown table column": ({"table": {"columns": ["oiou", "ciou2"]}}, "ciou2"),
    "table row naming no run": ({"table": {"rows": {"shraed": "shared"}}}, "shraed"),
    "unknown table reference": ({"table": {"reference": "shraed"}}, "did you mean 'shared'"),
    "unknown delta column": ({"table": {"delta": ["params"]}}, "delta"),
    "bad train option": ({"base": {**experiment()["base"], "train": {"epochz": 1}}}, "epochz"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_exit_2_with_one_line(
    case: str, tmp_path: Path, fake: FakeTrainer, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, key = BROKEN[case]
    path = write(tmp_path / "broken.yaml", experiment(**changes))
    assert main(run_args(path, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and key in err, err
    assert not (tmp_path / "runs").exists() and fake.calls == []


def test_bad_set_and_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "e.yaml", experiment())
    assert main(run_args(path, tmp_path, "--set", "trian.epochs=1")) == 2
    assert "--set trian.epochs" in capsys.readouterr().err
    assert main(run_args(path, tmp_path, "--shard", "2/2")) == 2
    assert not (tmp_path / "runs").exists()


def test_dry_run_lists_runs_and_starts_nothing(
    tmp_path: Path, fake: FakeTrainer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "e.yaml", experiment())
    assert main(run_args(path, tmp_path, "--dry-run")) == 0
    out = capsys.readouterr().out
    for run in load_experiment(path).runs:
        assert run.run_id in out
    assert not (tmp_path / "runs").exists() and fake.calls == []


# ------------------------------------------------------------------------------------------ local backend


def _table_files(tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "results" / "mini"
    return {name: (out / name).read_text() for name in ("table.csv", "table.md", "table.tex")}


def test_local_sweep_then_rerun_trains_nothing(
    tmp_path: Path, fake: FakeTrainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    path = write(tmp_path / "e.yaml", experiment())
    assert main(run_args(path, tmp_path, "--gpus", "none")) == 0
    assert len(fake.calls) == 4
    first = _table_files(tmp_path)
    assert "none" in first["table.csv"] and "\\toprule" in first["table.tex"]
    rows = first["table.csv"].splitlines()
    assert rows[1].startswith("none,none,2,0.05,") and ",50.5,0.7071," in rows[1]  # mean/std over 2 seeds
    command = (tmp_path / "results" / "mini" / "command.txt").read_text()
    assert "git commit:" in command and "machine:" in command and "e.yaml" in command
    assert "precision: fp32 (4 runs)" in command  # what the runs trained in, from their metrics.json
    for run in load_experiment(path).runs:
        run_dir = tmp_path / "runs" / "mini" / run.run_id
        assert {"config.yaml", "run.json", "metrics.json", "flops.json"} <= {p.name for p in run_dir.iterdir()}

    fake.calls.clear()
    assert main(run_args(path, tmp_path, "--gpus", "none")) == 0
    assert fake.calls == []  # finished runs are skipped
    assert _table_files(tmp_path) == first


def test_run_writes_plots_unless_told_not_to(
    tmp_path: Path, fake: FakeTrainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    path = write(tmp_path / "e.yaml", experiment())
    assert main(run_args(path, tmp_path, "--gpus", "none", "--no-plots")) == 0
    out = tmp_path / "results" / "mini"
    assert not list(out.glob("*.png")) and not list(out.glob("*.pdf"))
    assert main(run_args(path, tmp_path, "--gpus", "none")) == 0  # the fake runs log no curve and no sizes
    assert sorted(p.name for p in out.glob("*.p[nd][gf]")) == ["cost.pdf", "cost.png", "metrics.pdf", "metrics.png"]
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG" and (out / "cost.pdf").read_bytes()[:5] == b"%PDF-"


def test_killed_sweep_trains_only_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(backends, "measure_flops", fake_flops)
    path = write(tmp_path / "e.yaml", experiment())
    killed = FakeTrainer(fail_on_call=3)
    monkeypatch.setattr(backends, "_train_fn", lambda: killed)
    main(run_args(path, tmp_path, "--gpus", "none"))  # Ctrl-C during the third run
    assert not (tmp_path / "results").exists()  # the sweep stopped before the table
    ids = [r.run_id for r in load_experiment(path).runs]
    assert killed.calls == ids[:3]

    resumed = FakeTrainer()
    monkeypatch.setattr(backends, "_train_fn", lambda: resumed)
    assert main(run_args(path, tmp_path, "--gpus", "none")) == 0
    assert resumed.calls == ids[2:]  # the interrupted run (resumed by train_run) and the one never started

    # the same table as a sweep that was never interrupted
    clean = tmp_path / "clean"
    clean.mkdir()
    monkeypatch.setattr(backends, "_train_fn", lambda: FakeTrainer())
    assert main(run_args(path, clean, "--gpus", "none")) == 0
    assert _table_files(tmp_path) == _table_files(clean)


def test_shards_split_the_runs(tmp_path: Path, fake: FakeTrainer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    path = write(tmp_path / "e.yaml", experiment())
    ids = [r.run_id for r in load_experiment(path).runs]
    assert main(run_args(path, tmp_path, "--shard", "1/2", "--gpus", "none")) == 0
    assert fake.calls == ids[1::2]
    assert main(run_args(path, tmp_path, "--shard", "0/2", "--gpus", "none")) == 0
    assert sorted(fake.calls) == sorted(ids)


# ------------------------------------------------------------------------------------------ print / slurm


def test_print_backend_prints_torchrun_lines(
    tmp_path: Path, fake: FakeTrainer, capsys: pytest.CaptureFixture[str]
) -> None:
    base = experiment()["base"]
    path = write(tmp_path / "e.yaml", experiment(base={**base, "train": {**base["train"], "nproc_per_node": 8}}))
    assert main(run_args(path, tmp_path, "--backend", "print")) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("#")]
    assert len(lines) == 4 and fake.calls == []
    for line, run in zip(lines, load_experiment(path).runs, strict=True):
        config = tmp_path / "runs" / "mini" / run.run_id / "config.yaml"
        assert line == f"torchrun --standalone --nproc-per-node 8 -m risbench.cli.launch {config}"
        assert yaml.safe_load(config.read_text())["seed"] == run.seed


def test_slurm_backend_through_submitit_debug_executor(
    tmp_path: Path, fake: FakeTrainer, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("submitit")
    path = write(tmp_path / "e.yaml", experiment())
    assert main(run_args(path, tmp_path, "--backend", "slurm", "--executor", "debug", "--wait")) == 0
    assert len(fake.calls) == 4
    assert "submitted 4 jobs" in capsys.readouterr().out
    assert (tmp_path / "results" / "mini" / "table.tex").is_file()


def test_slurm_backend_needs_submitit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    path = write(tmp_path / "e.yaml", experiment())
    assert main(run_args(path, tmp_path, "--backend", "slurm")) == 2
    assert "pip install" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real training


def tiny_real(tmp_path: Path, **changes: Any) -> Path:
    return write(tmp_path / "real.yaml", experiment(seeds=[0], runs=[{"name": "shared"}], **changes))


def fake_slurm_job(run_dir: str) -> dict:
    """What a LocalExecutor task runs in its own process in the test below (importable: tests/ on PYTHONPATH)."""
    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    flops = {**fake_flops(cfg), "code_version": code_version(cfg, FLOPS_ROOTS)}
    (run_dir / "flops.json").write_text(json.dumps(flops))
    return FakeTrainer()(cfg, run_dir)


def test_slurm_backend_through_submitit_local_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit's LocalExecutor: one job array, each task a subprocess; then `risbench run` finds every
    run finished (no new jobs) and writes the table."""
    pytest.importorskip("submitit")
    from risbench.runner.slurm import run_slurm
    from risbench.runner.sweep import prepare_runs

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    path = write(tmp_path / "e.yaml", experiment())
    exp = load_experiment(path)
    run_dirs = prepare_runs(exp, exp.runs, tmp_path / "runs")
    folder = tmp_path / "runs" / "mini" / ".submitit"
    jobs = run_slurm(run_dirs, folder, executor="local", wait=True, timeout_min=10, job_fn=fake_slurm_job)
    assert len(jobs) == 4 and len({j.job_id for j in jobs}) == 4
    assert all((d / "metrics.json").is_file() for d in run_dirs)
    assert main(run_args(path, tmp_path, "--backend", "slurm", "--executor", "local", "--wait")) == 0
    assert "shared" in (tmp_path / "results" / "mini" / "table.md").read_text()


def test_printed_torchrun_line_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end with the real train_run: the print backend's line, run as printed (1 process), trains
    the run into its folder; then `risbench run` finds it finished and only measures and tabulates it."""
    path = tiny_real(tmp_path)
    assert main(run_args(path, tmp_path, "--backend", "print")) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("torchrun")]
    argv = shlex.split(line)
    torchrun = Path(sys.executable).parent / "torchrun"
    argv[0] = str(torchrun) if torchrun.exists() else "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (run,) = load_experiment(path).runs
    assert (tmp_path / "runs" / "mini" / run.run_id / "metrics.json").is_file()
    assert main(run_args(path, tmp_path, "--gpus", "none")) == 0
    assert "shared" in (tmp_path / "results" / "mini" / "table.csv").read_text()


def test_progress_view_renders_on_a_terminal(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "train_log.jsonl").write_text(json.dumps({"step": 5, "loss": 0.25, "train_seconds": 30.0}) + "\n")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with SweepProgress("mini", total=3, done=1, plain=False, console=console, interval=0.05) as progress:
        progress.start_run("r", run_dir, "cpu", total_steps=None, budget_s=60.0)
        time.sleep(0.3)
        assert progress.active["r"].loss == 0.25 and progress.active["r"].fraction == pytest.approx(0.5)
        assert progress.eta() is not None
        progress.finish_run("r", ok=True)
    text = buf.getvalue()
    assert "2 done · 0 running · 1 left" in text and "ETA" in text
