"""risbench.spec: the one `--set`, the rename rule and spec validation, as every caller sees them."""

from __future__ import annotations

import pytest

import risbench
from risbench.errors import IncompatibleError, RisbenchError, UnknownNameError
from risbench.runner.resolve import validate_run_config
from risbench.spec import (
    apply_overrides,
    check_traits,
    merge,
    resolve_model,
    resolve_model_spec,
    set_key,
    validate_spec,
)
from risbench.train.config import apply_run_overrides, resolve_run_config


def test_a_new_component_name_drops_the_old_options_on_every_path() -> None:
    spec = resolve_model_spec("shared-ris-tiny")
    assert set(spec["fpn"]) > {"name"}  # the preset sets Shared FPN options
    by_set = resolve_model_spec("shared-ris-tiny", ["fpn.dim=64", "fpn.name=cris"])
    by_section = resolve_model_spec("shared-ris-tiny", fpn={"name": "cris", "dim": 64})
    by_preset_form = resolve_model({"preset": "shared-ris-tiny", "fpn": {"name": "cris", "dim": 64}})
    by_merge = merge(spec, {"fpn": {"name": "cris", "dim": 64}})
    by_key = set_key(set_key(spec, "fpn.name", "cris", "x"), "fpn.dim", 64, "x")
    _, run = resolve_run_config(apply_run_overrides({"model": "shared-ris-tiny"}, ["model.fpn.name=cris"]))
    assert by_set["fpn"] == by_section["fpn"] == by_preset_form["fpn"] == by_merge["fpn"] == by_key["fpn"]
    assert by_set["fpn"] == {"name": "cris", "dim": 64}
    assert run["model"]["fpn"] == {"name": "cris"}
    # the same name is not a new component: its options stay
    assert resolve_model_spec("shared-ris-tiny", ["fpn.name=shared"])["fpn"] == spec["fpn"]


def test_set_key_needs_the_top_level_section_and_creates_deeper_ones() -> None:
    cfg = {"train": {"lr": 1.0}, "model": {}}
    assert set_key(cfg, "model.fpn.dim", 3, "x") == {"train": {"lr": 1.0}, "model": {"fpn": {"dim": 3}}}
    assert cfg == {"train": {"lr": 1.0}, "model": {}}  # a copy
    with pytest.raises(UnknownNameError, match="x: unknown key under the top level 'trian'; did you mean 'train'"):
        set_key(cfg, "trian.lr", 1, "x")
    with pytest.raises(RisbenchError, match="bad key"):
        set_key(cfg, "train..lr", 1, "x")
    assert apply_overrides(cfg, ["train.lr=2", "seed=3"]) == {"train": {"lr": 2}, "model": {}, "seed": 3}


def test_one_validation_for_build_and_runner() -> None:
    spec = resolve_model_spec("shared-ris-tiny")
    bad = {**spec, "fpn": {"name": "crs"}}
    for check in (
        lambda: validate_spec(bad),
        lambda: risbench.build_model(bad),
        lambda: validate_run_config({"model": bad, "data": "synthref"}, "run"),
    ):
        with pytest.raises(UnknownNameError, match=r"model\.fpn\.name: unknown fpn 'crs'; did you mean 'cris'"):
            check()
    with pytest.raises(UnknownNameError, match="model: unknown key 'fnp'"):
        validate_spec({**spec, "fnp": {}})
    with pytest.raises(UnknownNameError, match=r"model\.fpn: unknown key 'dimm'"):
        validate_spec({**spec, "fpn": {"name": "shared", "dimm": 3}})
    parts = validate_spec(spec)
    assert parts["fpn"][0] == "shared" and parts["fpn"][1].dim == spec["fpn"]["dim"]


def test_trait_mismatch_names_both_sides() -> None:
    check_traits("fpn", "shared", frozenset({"text_tokens"}), "encoder", "e", frozenset({"text_tokens", "x"}))
    with pytest.raises(IncompatibleError, match="fpn 'shared' needs joint_tokens but encoder 'swin' provides multi"):
        check_traits("fpn", "shared", frozenset({"joint_tokens"}), "encoder", "swin", frozenset({"multi_scale"}))


def test_one_definition_each_of_set_rename_and_validation() -> None:
    """`--set`, the rename rule and spec validation are written once, in risbench/spec.py."""
    import re

    from risbench.config import PROJECT_ROOT

    sources = {p: p.read_text() for p in (PROJECT_ROOT / "risbench").rglob("*.py")}
    for name in ("set_key", "replaces", "validate_spec", "check_traits"):
        defined = [p.name for p, text in sources.items() if re.search(rf"^def {name}\(", text, re.M)]
        assert defined == ["spec.py"], (name, defined)
    # the rule's comparison of component names appears nowhere else
    rule = re.compile(r"""\.get\(["']name["']\) !=""")
    assert [p.name for p, text in sources.items() if rule.search(text)] == ["spec.py"]
