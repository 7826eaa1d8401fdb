"""`risbench bench`: times a shrunken model's train and inference steps, writes its table, rejects bad input."""

from __future__ import annotations

import json

import pytest
import torch

from risbench.cli.main import main

SMALL = [
    "encoder.image_size=32",
    "encoder.embed_dim=32",
    "encoder.num_heads=2",
    "encoder.depth=2",
    "encoder.out_indices=[1,2]",
    "fpn.dim=32",
    "fpn.num_heads=2",
    "decoder.num_heads=2",
    "decoder.head.conv_dim=16",
]
SETS = [a for s in SMALL for a in ("--set", s)]


def test_bench_writes_one_row_per_batch_size(tmp_path):
    args = ["bench", "--model", "shared-ris-tiny", *SETS, "--batch-size", "2", "--batch-size", "3"]
    assert main([*args, "--steps", "2", "--warmup", "1", "--device", "cpu", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [r["input"]["batch_size"] for r in data["results"]] == [2, 3]
    for r in data["results"]:
        assert r["mode"] == "train" and r["amp"] == "off (fp32)" and r["weights"] == "random"
        assert r["images_per_s"] == pytest.approx(r["input"]["batch_size"] / r["s_per_step_median"])
        assert r["device"]["type"] == "cpu" and "peak_memory_gib" not in r
    table = (tmp_path / "bench.md").read_text()
    assert data["command"] in table and "| 2 |" in table and "| 3 |" in table


def test_bench_infer_mode_leaves_weights_alone():
    from risbench.benchmark import benchmark_step

    r = benchmark_step("shared-ris-tiny", SMALL, batch_size=2, mode="infer", device="cpu", steps=1, warmup=0)
    assert r["mode"] == "infer" and r["s_per_step_median"] > 0


def test_bench_reports_each_step():
    """`risbench bench` shows progress from these calls instead of staying silent for minutes on a CPU."""
    from risbench.benchmark import benchmark_step

    calls = []
    benchmark_step(
        "shared-ris-tiny", SMALL, batch_size=1, mode="infer", device="cpu", steps=2, warmup=1,
        on_step=lambda *a: calls.append(a),
    )  # fmt: skip
    assert calls == [("warm-up", 1, 1), ("timed", 1, 2), ("timed", 2, 2)]


def test_bench_bad_input_exits_2(capsys):
    assert main(["bench", "--model", "shared-ris-tiny", "--mode", "fit"]) == 2
    assert "--mode: expected one of train, infer, got 'fit'" in capsys.readouterr().err
    assert main(["bench", "--model", "shared-ris-tiny", "--amp", "fp8"]) == 2
    assert "--amp: amp must be one of auto, bf16, off, got 'fp8'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--model", "shared-ris-tiny", "--device", "cuda"]) == 2
        assert "no CUDA device is visible" in capsys.readouterr().err


def test_bench_counts_flops_per_step_and_achieved_rate():
    """A train step is 3 forward passes of fvcore's multiply-adds at 2 FLOPs each; the rate is over the median."""
    from risbench.benchmark import benchmark_step
    from risbench.flops import measure
    from risbench.models.segmenter import build_segmenter
    from risbench.spec import resolve_model_spec

    r = benchmark_step("shared-ris-tiny", SMALL, batch_size=2, device="cpu", steps=1, warmup=0)
    macs = measure(build_segmenter(resolve_model_spec("shared-ris-tiny", SMALL)), 32, 20)["total"]["flops"]
    assert r["gmacs_per_image"] == pytest.approx(macs / 1e9)
    assert r["gflop_per_step"] == pytest.approx(2 * 3 * 2 * macs / 1e9)
    assert r["achieved_gflop_per_s"] == pytest.approx(r["gflop_per_step"] / r["s_per_step_median"])
    infer = benchmark_step("shared-ris-tiny", SMALL, batch_size=2, mode="infer", device="cpu", steps=1, warmup=0)
    assert infer["gflop_per_step"] == pytest.approx(2 * 2 * macs / 1e9)


def test_bench_times_a_pretraining_step(tmp_path, monkeypatch):
    """`bench --pretrain CONFIG`: the objective's step at the config's batch and text length, with its FLOPs."""
    import yaml
    from test_pretrain import tiny_pretrain

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_pretrain(tmp_path)))
    args = ["bench", "--pretrain", str(config), "--steps", "1", "--warmup", "0", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    (r,) = json.loads((tmp_path / "out" / "bench.json").read_text())["results"]
    assert r["mode"] == "pretrain" and r["input"] == {"image_size": 32, "text_len": 10, "batch_size": 4}
    assert r["gflop_per_step"] > 0 and r["achieved_gflop_per_s"] > 0
    assert "--pretrain" in (tmp_path / "out" / "bench.md").read_text()
