"""The result files (risbench.results): each dataclass round-trips through its file; files of the previous
code (no schema_version) still read; a newer schema, a missing field or a field of the wrong type is one
line naming the file and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from risbench.cli.main import main
from risbench.config import PROJECT_ROOT
from risbench.errors import RisbenchError
from risbench.results import (
    FLOPS_FILE,
    METRICS_FILE,
    PRETRAIN_FILE,
    RUN_FILE,
    Flops,
    Metrics,
    PretrainProvenance,
    ResultFile,
    RunInfo,
)

COMMITTED_RUN = PROJECT_ROOT / "results" / "synthref_learning" / "cpu-8min"  # metrics.json of the previous code
# the pretrain.json of the first committed artifact (beit3-tiny-synthref-d79a4911a460, written before schema_version
# existed; the artifact itself was replaced in 3335d37), kept as a sample of version 1
COMMITTED_ARTIFACT = PROJECT_ROOT / "tests" / "data" / "legacy" / PRETRAIN_FILE

SAMPLES: dict[type[ResultFile], ResultFile] = {
    Metrics: Metrics(
        splits={"val": {"split": "val", "threshold": 0.35, "oIoU": 61.25, "mIoU": 60.5, "P@0.5": 70.0}},
        train={"steps": 30, "best_step": 20, "val_history": [{"step": 20, "oIoU": 50.0}]},
        provenance={"code_version": "0123456789abcdef", "seed": 0, "weights": "random"},
    ),
    Flops: Flops(
        model={"encoder": {"name": "beit3"}},
        input={"image_size": 128, "text_len": 20, "batch_size": 1},
        components={"encoder": {"params": 4_000_000, "flops": 600_000_000}, "fpn": {"params": 5, "flops": 7}},
        total={"params": 4_000_005, "trainable_params": 4_000_005, "frozen_params": 0, "flops": 600_000_007},
        uncounted_ops={"aten::add": 2},
        convention="fvcore: one multiply-add = one flop",
        weights="random",
        parts=[{"component": "fpn", "part": "fpn", "params": 5, "flops": 7}],
        code_version="fedcba9876543210",
    ),
    RunInfo: RunInfo(
        experiment="exp", variant="shared", seed=2, index=1, run_id="shared-s2-abcdef", config_hash="abcdef"
    ),
    PretrainProvenance: PretrainProvenance(
        name="tiny",
        hash="0123456789ab",
        command="risbench pretrain tiny",
        config={"name": "tiny", "seed": 1},
        objective="beit3_mim_mlm",
        steps=4,
        train_seconds=1.5,
        final={"loss": 2.5},
        loss_curve=[{"step": 4, "loss": 2.5}],
        encoder_options={"weights": "encoder.pth"},
        tokenizer="tokenizer.model",
        files={"encoder.pth": "ab" * 32},
        seed=1,
    ),
}
NAMES = {Metrics: METRICS_FILE, Flops: FLOPS_FILE, RunInfo: RUN_FILE, PretrainProvenance: PRETRAIN_FILE}
REQUIRED = {
    Metrics: ["splits"],
    Flops: ["components", "total"],
    RunInfo: ["variant", "seed"],
    PretrainProvenance: ["name", "hash", "config", "objective", "steps", "encoder_options", "tokenizer", "files"],
}
KINDS = list(SAMPLES)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_round_trip(tmp_path: Path, kind: type[ResultFile]) -> None:
    sample = SAMPLES[kind]
    path = tmp_path / NAMES[kind]
    sample.write(path)
    on_disk = json.loads(path.read_text())
    assert next(iter(on_disk)) == "schema_version" and on_disk["schema_version"] == kind.VERSION == 1
    assert on_disk == sample.to_dict()
    assert kind.read(path) == sample


def test_unset_optional_fields_are_not_written() -> None:
    """A metrics.json has no `checkpoint`, an evaluation under evals/ no `train`: each as the writers left it."""
    assert list(SAMPLES[Metrics].to_dict()) == ["schema_version", "splits", "train", "provenance"]
    evaluation = Metrics(splits={"val": {"oIoU": 1.0}}, provenance={}, checkpoint="runs/x/checkpoints/last.pt")
    assert list(evaluation.to_dict()) == ["schema_version", "splits", "provenance", "checkpoint"]


def test_files_of_the_previous_code_read_as_version_1(tmp_path: Path) -> None:
    # a committed metrics.json and pretrain.json, written before schema_version existed
    raw = json.loads((COMMITTED_RUN / METRICS_FILE).read_text())
    assert "schema_version" not in raw
    metrics = Metrics.read(COMMITTED_RUN / METRICS_FILE)
    assert metrics.schema_version == 1 and metrics.splits == raw["splits"] and metrics.train == raw["train"]
    assert metrics.code_version == raw["provenance"].get("code_version")
    evaluation = Metrics.read(COMMITTED_RUN / "val_t0.35_original.json")  # a `risbench eval` result
    assert evaluation.train is None and isinstance(evaluation.checkpoint, str) and "val" in evaluation.splits
    prov_raw = json.loads(COMMITTED_ARTIFACT.read_text())
    assert prov_raw.get("schema") == 1 and "schema_version" not in prov_raw  # version 1 named it `schema`
    prov = PretrainProvenance.read(COMMITTED_ARTIFACT)
    assert (prov.schema_version, prov.steps, prov.hash) == (1, prov_raw["steps"], prov_raw["hash"])
    # flops.json and run.json as the previous code wrote them (measure()'s dict + code_version; the sweep's row)
    old = {k: v for k, v in SAMPLES[Flops].to_dict().items() if k != "schema_version"}
    (tmp_path / FLOPS_FILE).write_text(json.dumps(old))
    flops = Flops.read(tmp_path / FLOPS_FILE)
    assert flops.schema_version == 1 and flops.count("fpn") == (5, 7) and flops.text_len == 20
    (tmp_path / RUN_FILE).write_text(json.dumps({"experiment": "e", "variant": "v", "seed": 0, "index": 3}))
    assert RunInfo.read(tmp_path / RUN_FILE) == RunInfo(experiment="e", variant="v", seed=0, index=3)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path, kind: type[ResultFile]) -> None:
    path = tmp_path / NAMES[kind]
    path.write_text(json.dumps({**SAMPLES[kind].to_dict(), "schema_version": kind.VERSION + 1}))
    with pytest.raises(RisbenchError) as exc:
        kind.read(path)
    text = _one_line(exc)
    assert text.startswith(f"{path}: ") and f"schema version {kind.VERSION + 1}" in text and "update risbench" in text


@pytest.mark.parametrize("version", [0, -1, "1", 1.5, True, None])
def test_a_schema_version_that_is_not_one_is_refused(tmp_path: Path, version) -> None:
    path = tmp_path / METRICS_FILE
    path.write_text(json.dumps({**SAMPLES[Metrics].to_dict(), "schema_version": version}))
    with pytest.raises(RisbenchError, match="is not a version") as exc:
        Metrics.read(path)
    assert _one_line(exc).startswith(f"{path}: schema_version ")


@pytest.mark.parametrize(
    "kind, name", [(k, n) for k in KINDS for n in REQUIRED[k]], ids=lambda x: getattr(x, "__name__", x)
)
def test_a_missing_field_is_refused_naming_file_and_field(tmp_path: Path, kind: type[ResultFile], name: str) -> None:
    path = tmp_path / NAMES[kind]
    path.write_text(json.dumps({k: v for k, v in SAMPLES[kind].to_dict().items() if k != name}))
    with pytest.raises(RisbenchError) as exc:
        kind.read(path)
    assert _one_line(exc).startswith(f"{path}: no '{name}' field, which a {kind.WHAT} of schema version 1 has; ")


def test_the_required_fields_are_those_without_a_default() -> None:
    from dataclasses import MISSING, fields

    for kind in KINDS:
        without = [f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING]
        assert without == REQUIRED[kind], kind


@pytest.mark.parametrize(
    "kind, name, value",
    [(Metrics, "splits", [1, 2]), (Metrics, "train", "fast"), (RunInfo, "seed", "0"), (Flops, "total", None),
     (PretrainProvenance, "steps", 4.5), (RunInfo, "seed", True)],
)  # fmt: skip
def test_a_field_of_the_wrong_type_is_refused(tmp_path: Path, kind: type[ResultFile], name: str, value) -> None:
    path = tmp_path / NAMES[kind]
    path.write_text(json.dumps({**SAMPLES[kind].to_dict(), name: value}))
    with pytest.raises(RisbenchError) as exc:
        kind.read(path)
    assert _one_line(exc).startswith(f"{path}: field '{name}' should be ")


def test_unreadable_json_and_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / RUN_FILE
    path.write_text('{"variant": ')
    with pytest.raises(RisbenchError, match="not readable JSON.*risbench run EXPERIMENT rewrites it"):
        RunInfo.read(path)
    path.write_text("[1, 2]")
    with pytest.raises(RisbenchError, match="expected a JSON object, got list"):
        RunInfo.read(path)


def test_table_refuses_a_newer_metrics_file_in_one_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "exp" / "shared-s0-abcdef"
    run.mkdir(parents=True)
    SAMPLES[RunInfo].write(run / RUN_FILE)
    (run / METRICS_FILE).write_text(json.dumps({**SAMPLES[Metrics].to_dict(), "schema_version": 99}))
    out = tmp_path / "table.md"
    assert main(["table", str(tmp_path / "exp"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run / METRICS_FILE}: metrics file of schema version 99" in err, err
    assert not out.exists()


def test_a_run_folder_of_the_previous_code_collects_as_one_written_now(tmp_path: Path) -> None:
    """A committed metrics.json (no schema_version) and the same numbers written now give the same rows."""
    from risbench.runner.collect import collect

    exp = tmp_path / "exp"
    for variant in ("old", "new"):
        (exp / variant).mkdir(parents=True)
        shutil.copy(COMMITTED_RUN / METRICS_FILE, exp / variant / METRICS_FILE)
        RunInfo(experiment="exp", variant=variant, seed=0).write(exp / variant / RUN_FILE)
    rewritten = exp / "new" / METRICS_FILE
    Metrics.read(rewritten).write(rewritten)
    assert "schema_version" in json.loads(rewritten.read_text())
    tidy = collect(exp)
    old, new = (tidy[tidy["variant"] == v][["split", "metric", "value"]].reset_index(drop=True) for v in ("old", "new"))
    assert len(old) >= 7 and old.equals(new)
