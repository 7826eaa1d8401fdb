"""The registry, YAML config loading, overrides and dataclass validation."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from risbench.config import PROJECT_ROOT, find_preset, read_yaml, to_dataclass
from risbench.errors import RisbenchError, UnknownNameError
from risbench.registry import DECODERS, ENCODERS, FPNS, Registry
from risbench.spec import apply_overrides, load_config


def test_registry_register_get_and_duplicates():
    reg = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        """An alpha widget.

        More text."""

    assert reg.get("alpha").obj is Alpha
    assert reg.get("alpha").summary == "An alpha widget."
    with pytest.raises(RisbenchError, match="registered twice"):
        reg.register("alpha")(Alpha)


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(UnknownNameError) as info:
        FPNS.get("sharde")
    msg = str(info.value)
    assert "did you mean 'shared'" in msg and "none" in msg
    assert "\n" not in msg


def test_builtin_components_registered():
    assert {"shared", "none"} <= set(FPNS.names())
    assert {"shared", "no_fusion"} <= set(DECODERS.names())
    assert "beit3" in ENCODERS


@dataclass
class Inner:
    width: int = 4


@dataclass
class Outer:
    name: str = "x"
    rate: float = 0.1
    layers: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_to_dataclass_validates_and_coerces():
    obj = to_dataclass(Outer, {"rate": 1, "layers": [3, 4], "inner": {"width": 8}}, "cfg")
    assert obj.rate == 1.0 and isinstance(obj.rate, float)
    assert obj.layers == (3, 4) and obj.inner.width == 8
    with pytest.raises(UnknownNameError, match=r"cfg: unknown key 'rte'; did you mean 'rate'"):
        to_dataclass(Outer, {"rte": 2}, "cfg")
    with pytest.raises(RisbenchError, match=r"cfg.inner: unknown key"):
        to_dataclass(Outer, {"inner": {"wdth": 2}}, "cfg")
    with pytest.raises(RisbenchError, match=r"cfg.layers: expected"):
        to_dataclass(Outer, {"layers": "abc"}, "cfg")
    with pytest.raises(RisbenchError, match=r"cfg.rate: expected float"):
        to_dataclass(Outer, {"rate": True}, "cfg")
    # YAML 1.1 reads 4e-4 (no dot) as a string; a float field takes it as the number it spells
    assert to_dataclass(Outer, {"rate": "4e-4"}, "cfg").rate == 4e-4
    with pytest.raises(RisbenchError, match=r"cfg.rate: expected float, got '4e-4x'"):
        to_dataclass(Outer, {"rate": "4e-4x"}, "cfg")


def test_include_merges_dicts_and_replaces_lists(tmp_path):
    (tmp_path / "base.yaml").write_text("a: {x: 1, y: [1, 2]}\nb: 3\n")
    (tmp_path / "child.yaml").write_text("include: base.yaml\na: {y: [9]}\nc: 4\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg == {"a": {"x": 1, "y": [9]}, "b": 3, "c": 4}


def test_include_cycle_and_bad_yaml(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(RisbenchError, match="include cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(RisbenchError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(RisbenchError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides():
    cfg = {"fpn": {"name": "shared", "dim": 512}, "train": {"lr": 1e-4}}
    out = apply_overrides(cfg, ["fpn.dim=256", "train.lr=0.001", "fpn.layers=[1, 2]"])
    assert out["fpn"]["dim"] == 256 and out["train"]["lr"] == 0.001 and out["fpn"]["layers"] == [1, 2]
    assert cfg["fpn"]["dim"] == 512  # input untouched
    with pytest.raises(UnknownNameError, match="did you mean 'train'"):
        apply_overrides(cfg, ["trian.lr=1"])
    with pytest.raises(RisbenchError, match="key=value"):
        apply_overrides(cfg, ["train.lr"])


def test_find_preset():
    assert find_preset("models", "shared-ris-b").name == "shared-ris-b.yaml"
    with pytest.raises(UnknownNameError, match="did you mean 'shared-ris-b'"):
        find_preset("models", "shared-ris-bb")


@pytest.mark.parametrize("path", sorted(PROJECT_ROOT.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_shipped_run_configs_validate(path):
    from risbench.train.config import resolve_run_config

    cfg, resolved = resolve_run_config(load_config(path))
    assert resolved["model"]["encoder"]["name"] and cfg.train.max_steps


@pytest.mark.parametrize(
    "path", sorted(PROJECT_ROOT.glob("experiments/**/*.yaml")), ids=lambda p: str(p.relative_to(PROJECT_ROOT))
)
def test_shipped_experiments_validate(path):
    """Every experiment file validates: a sweep (`runs` / `base`, `risbench run`) or an efficiency file
    (`rows`, `risbench efficiency`), each against its own schema, the registries and the presets."""
    from risbench import efficiency
    from risbench.runner.experiment import load_experiment

    if "rows" in read_yaml(path):
        exp, _, papers = efficiency.validate_experiment(path)
        assert exp.rows and len(papers) == len(exp.rows)
    else:
        runs = load_experiment(path).runs
        assert runs
        # nothing lost (issue 12): every run saves checkpoints/last.pt periodically, not only at the end
        assert all((r.config["train"].get("ckpt_every") or 0) >= 1 for r in runs), path


def test_a_registry_loads_its_builtins_on_first_lookup_and_retries_after_a_failure() -> None:
    import sys

    reg = Registry("thing", builtins="risbench_no_such_package")
    for _ in range(2):  # a failed import is not remembered as loaded
        with pytest.raises(ModuleNotFoundError):
            reg.names()
    assert "risbench_no_such_package" not in sys.modules
    assert Registry("thing").names() == []  # no built-ins: nothing to import
