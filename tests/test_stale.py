"""Nothing stale (issue 12, item 2): a finished run, or a flops.json, is reused only when the code version of
the files that produced it is the current one; otherwise it is trained again (its old outputs kept under
stale/), or, with --keep-stale, kept and marked stale in the table."""

from __future__ import annotations

import importlib
import json
import shutil
import sys

import pytest
import yaml
from test_runner import FakeTrainer, experiment, fake_flops, run_args, write

from risbench.cli.main import main
from risbench.registry import FPNS
from risbench.runner import backends
from risbench.runner.experiment import load_experiment

PROBE = '''"""An FPN a test edits after its run has finished."""

from risbench.models.fpn.shared import NoFPN, NoFPNConfig
from risbench.registry import FPNS


@FPNS.register("stale_probe", config=NoFPNConfig)
class StaleProbe(NoFPN):
    """The 'none' FPN under another name, in a file of its own."""
'''


@pytest.fixture
def probe_fpn(tmp_path, monkeypatch):
    """A component in its own module file (registered as 'stale_probe'); yields the file."""
    path = tmp_path / "stale_probe_fpn.py"
    path.write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("stale_probe_fpn")
    yield path
    FPNS._entries.pop("stale_probe", None)
    sys.modules.pop("stale_probe_fpn", None)


class CountingFlops:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, cfg: dict) -> dict:
        self.calls += 1
        return fake_flops(cfg)


def test_a_changed_component_is_not_reused_silently(tmp_path, probe_fpn, monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    fake, flops = FakeTrainer(), CountingFlops()
    monkeypatch.setattr(backends, "_train_fn", lambda: fake)
    monkeypatch.setattr(backends, "measure_flops", flops)
    runs = [{"name": "probe", "set": {"fpn.name": "stale_probe", "fpn.dim": 128}}, {"name": "shared"}]
    path = write(tmp_path / "e.yaml", experiment(runs=runs, seeds=[0]))
    probe, shared = (r.run_id for r in load_experiment(path).runs)
    assert main(run_args(path, tmp_path, "--gpus", "none")) == 0
    assert fake.calls == [probe, shared] and flops.calls == 2
    probe_dir = tmp_path / "runs" / "mini" / probe
    first = json.loads((probe_dir / "metrics.json").read_text())

    fake.calls.clear()
    assert main(run_args(path, tmp_path, "--gpus", "none")) == 0
    assert fake.calls == [] and flops.calls == 2  # same code: reused

    probe_fpn.write_text(PROBE + "\n# a changed line of the component's code\n")
    assert main(run_args(path, tmp_path, "--dry-run")) == 0
    assert "stale" in capsys.readouterr().out
    assert main(run_args(path, tmp_path, "--gpus", "none", "--keep-stale")) == 0
    assert fake.calls == []  # kept on request ...
    assert (probe_dir / "stale.json").is_file()  # ... and marked stale in the table
    assert (
        f"STALE, produced by other code than this checkout (kept with --keep-stale): {probe}"
        in (tmp_path / "results" / "mini" / "table.md").read_text()
    )

    assert main(run_args(path, tmp_path, "--gpus", "none")) == 0
    assert fake.calls == [probe]  # the changed component's run only: 'shared' does not use that file
    assert flops.calls == 3  # its flops.json was counted by other code too
    (archived,) = (probe_dir / "stale").iterdir()
    assert json.loads((archived / "metrics.json").read_text()) == first  # the old result is kept, not lost
    assert not (probe_dir / "stale.json").exists()
    assert "STALE" not in (tmp_path / "results" / "mini" / "table.md").read_text()


def test_train_run_trains_again_a_run_of_other_code(tmp_path):
    """train_run (risbench train) applies the same rule: a finished run whose metrics.json names another
    code version is trained again, and the old outputs move to stale/<version>/."""
    import torch
    from test_train import tiny_config

    from risbench.train.api import train_run

    cfg = tiny_config(tmp_path, max_steps=1, val_every=None)
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train_run(cfg, run, quiet=True)
        assert train_run(cfg, run, quiet=True) == metrics  # same code: reused as is
        edited = {**metrics, "provenance": {**metrics["provenance"], "code_version": "0123456789abcdef"}}
        (run / "metrics.json").write_text(json.dumps(edited))
        again = train_run(cfg, run, quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert again["provenance"]["code_version"] == metrics["provenance"]["code_version"]
    assert again["splits"] == metrics["splits"]  # same code, same seed: the same numbers
    old = run / "stale" / "0123456789abcdef"
    assert json.loads((old / "metrics.json").read_text()) == edited
    assert (old / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == cfg["seed"]
    shutil.rmtree(run)
