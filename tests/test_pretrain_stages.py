"""Staged pretraining (`continue_from`): a stage starts from the artifact of the one it continues (encoder,
heads, tokenizer), makes it first when it is missing, hashes the whole chain, and refuses a stage that
would not build the same encoder, or a cycle, with one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_pretrain import TINY_ENCODER, isolated_cache, tiny_pretrain  # noqa: F401 (the cache fixture)

from risbench.cli.main import main


def _stage(tmp_path: Path, parent: dict, **objective) -> dict:
    """A second stage of `parent`: its data and recipe, no model or tokenizer path of its own."""
    child = {k: v for k, v in tiny_pretrain(tmp_path, max_steps=2).items() if k != "model"}
    child["name"] = "tiny-stage2"
    child["continue_from"] = parent
    child["objective"] = {**child["objective"], **objective}
    child["tokenizer"] = {k: v for k, v in child["tokenizer"].items() if k != "vocab_size"}
    return child


def test_a_stage_starts_from_its_parents_artifact_and_makes_it_first(tmp_path):
    from risbench.train.pretrain import build_objective, find_artifact, pretrain, read_artifact, tokenizer_cache
    from risbench.train.pretrain_config import parent_name, resolve_pretrain_config

    parent = tiny_pretrain(tmp_path, max_steps=3)
    child = _stage(tmp_path, parent, tag_weight=1.0, tag_classes=["colour"])
    cfg, resolved = resolve_pretrain_config(child)
    assert resolved["model"] == resolve_pretrain_config(parent)[1]["model"]  # the parent's model
    assert find_artifact(parent_name(resolved)) is None
    art = pretrain(child, quiet=True)
    first = find_artifact(parent_name(resolved))  # the parent was made on the way, in the cache
    assert first is not None and first.provenance.steps == 3 and art.provenance.steps == 2
    assert art.provenance.config["continue_from"]["name"] == "tiny-test"
    from risbench.runner.pretrained import describe_weights

    assert describe_weights(art.encoder_options["weights"]).endswith("(pretrained: beit3_mdm, 3 + 2 steps in 2 stages)")
    # the stage's tokenizer is its parent's, byte for byte
    assert Path(art.tokenizer_path).read_bytes() == Path(first.tokenizer_path).read_bytes()
    # before its first step, the stage holds the parent's encoder and heads; the head it adds is new
    objective, _, _ = build_objective(cfg, resolved, tokenizer_cache(cfg), read_artifact(first.directory))
    exported = torch.load(first.encoder_options["weights"], weights_only=True)["model"]
    start = objective.export()["encoder.pth"]["model"]
    assert {k.split(".")[0] for k in exported} == {"beit3", "mlm_head", "mim_head"}
    for key, value in exported.items():
        assert torch.equal(start[key], value), key
    assert any(k.startswith("tag_head.") for k in start)
    # the chain is in the hash: another parent recipe is another stage
    other = resolve_pretrain_config(_stage(tmp_path, tiny_pretrain(tmp_path, max_steps=4)))[1]
    assert parent_name(other) != parent_name(resolved)
    assert resolve_pretrain_config(resolved)[1] == resolved  # a resolved chain resolves to itself


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"model": {"preset": "shared-ris-tiny", "encoder": {**TINY_ENCODER, "depth": 3}}}, "depth (3 here, 2 there)"),
        ({"tokenizer": {"path": "tok.model"}}, "the tokenizer is the continued artifact's"),
        ({"objective": {"name": "beit3_mdm", "text_mask_ratio": 0}}, "text_mask_ratio must be in (0, 1]"),
    ],
)
def test_a_stage_that_cannot_continue_is_one_line_exit_2(tmp_path, capsys, change, expected):
    child = {**_stage(tmp_path, tiny_pretrain(tmp_path)), **change}
    out = tmp_path / "out"
    assert main(["pretrain", str(_write(tmp_path / "stage.yaml", child)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists() and not (tmp_path / "cache" / "pretrain").exists()


def test_a_cycle_of_stages_is_refused(tmp_path, capsys):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    _write(a, {**tiny_pretrain(tmp_path), "continue_from": str(b)})
    _write(b, {**tiny_pretrain(tmp_path), "name": "b", "continue_from": str(a)})
    assert main(["pretrain", str(a), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cycle" in err, err


def test_the_shipped_tag_stages_continue_the_committed_artifact():
    """`risbench pretrain beit3-conv-tiny-synthref-tags2` on a fresh clone makes two stages of 300 steps, not
    the 3000-step first stage: the chain ends at an artifact committed under pretrained/."""
    from risbench.train.pretrain import COMMITTED_DIR
    from risbench.train.pretrain_config import load_pretrain_config, parent_name, resolve_pretrain_config

    resolved = resolve_pretrain_config(load_pretrain_config("beit3-conv-tiny-synthref-tags2"))[1]
    chain = []
    while "continue_from" in resolved:
        chain.append(parent_name(resolved))
        resolved = resolved["continue_from"]
    assert [name.rsplit("-", 1)[0] for name in chain] == ["beit3-conv-tiny-synthref-tags", "beit3-conv-tiny-synthref"]
    assert (COMMITTED_DIR / chain[-1] / "pretrain.json").is_file()
