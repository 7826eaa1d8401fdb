"""The precision modes of `train.amp` (risbench/train/precision.py): bf16_if_native follows the device's
native bf16 support, and an explicit bf16 where it is emulated gets one line that names the fix."""

from __future__ import annotations

import logging

import pytest
import torch

from risbench.train import precision
from risbench.train.config import TrainConfig
from risbench.train.pretrain_config import PretrainRecipe

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_modes_follow_native_support(monkeypatch, native):
    monkeypatch.setattr(precision, "_cpu_bf16", lambda: native)
    assert precision.uses_bf16(CPU, "bf16_if_native") is native
    assert precision.precision_name(CPU, "bf16_if_native") == ("bf16 autocast" if native else "fp32")
    assert precision.uses_bf16(CPU, "bf16") and not precision.uses_bf16(CPU, "off")
    assert not precision.uses_bf16(CPU, "auto")  # auto: bf16 on CUDA only, as before the new mode
    ctx = precision.autocast_context(CPU, "bf16_if_native")
    with ctx:
        out = torch.ones(4, 4) @ torch.ones(4, 4)
    assert out.dtype == (torch.bfloat16 if native else torch.float32)


def test_explicit_bf16_where_emulated_names_the_fix(monkeypatch, caplog):
    monkeypatch.setattr(precision, "_cpu_bf16", lambda: False)
    line = precision.slow_bf16_warning(CPU, "bf16")
    assert line and "train.amp=bf16_if_native" in line and "train.amp=off" in line and "\n" not in line
    assert all(precision.slow_bf16_warning(CPU, amp) is None for amp in ("bf16_if_native", "off", "auto"))
    with caplog.at_level(logging.WARNING, logger="risbench"):
        precision.warn_if_slow_bf16(CPU, "bf16", "--amp")
    assert "--amp=bf16_if_native" in caplog.text
    monkeypatch.setattr(precision, "_cpu_bf16", lambda: True)
    assert precision.slow_bf16_warning(CPU, "bf16") is None


def test_configs_accept_the_mode_and_name_all_modes():
    assert TrainConfig(amp="bf16_if_native").amp == "bf16_if_native"
    assert PretrainRecipe(amp="bf16_if_native").amp == "bf16_if_native"
    with pytest.raises(ValueError, match="auto, bf16, bf16_if_native, off"):
        TrainConfig(amp="fp16")


def test_cpu_experiments_ask_for_bf16_only_where_native():
    """Every run of the CPU fine-tuning experiments: bf16 where the CPU has it, fp32 on an AVX2-only one
    (where bf16 would make `make run` take about a day)."""
    from risbench.config import PROJECT_ROOT
    from risbench.runner.experiment import load_experiment

    for name in ("fpn_ablation", "pretraining", "single_encoder"):
        exp = load_experiment(PROJECT_ROOT / "experiments" / f"{name}.yaml")
        assert {r.config["train"]["amp"] for r in exp.runs} == {"bf16_if_native"}, name
