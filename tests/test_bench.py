"""`risbench bench`: times a shrunken model's train and inference steps, writes its table, rejects bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL

from risbench.cli.main import main

SETS = [a for s in SMALL for a in ("--set", s)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
    assert "--amp: amp must be one of auto, bf16, bf16_if_native, off, got 'fp8'" in capsys.readouterr().err
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
    peak = r["peak"]["measured"]  # the config's train.amp is off: an fp32 step against the fp32 GEMM peak
    assert r["amp"] == "off (fp32)" and peak["dtype"] == "float32"
    assert r["mfu_measured"] == pytest.approx(r["achieved_gflop_per_s"] / 1000 / peak["tflops"])
    table = (tmp_path / "out" / "bench.md").read_text()
    command = next(line for line in table.splitlines() if line.startswith("- command:"))
    assert "--pretrain" in command and "--amp" not in command  # a pretraining step's precision is its config's


def test_bench_reports_mfu_phase_shares_and_the_plain_loop(tmp_path):
    args = ["bench", "--model", "shared-ris-tiny", *SETS, "--batch-size", "2", "--steps", "2", "--warmup", "1"]
    assert main([*args, "--device", "cpu", "--speed", "host_sync=log", "--out", str(tmp_path)]) == 0
    (r,) = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert set(r["phase_share"]) == {"data", "forward", "backward", "optimizer", "other"}
    assert sum(r["phase_share"].values()) == pytest.approx(1.0)
    assert r["phase_share"]["backward"] > 0 and r["phase_share"]["forward"] > 0
    peak = r["peak"]["measured"]
    assert peak["dtype"] == "float32" and peak["tflops"] > 0 and r["peak"]["nominal"] is None
    assert r["mfu_measured"] == pytest.approx(r["achieved_gflop_per_s"] / 1000 / peak["tflops"])
    assert r["achieved_tflop_per_s"] == pytest.approx(r["achieved_gflop_per_s"] / 1000)
    plain = r["plain_loop_s_per_step_median"]
    assert r["harness_overhead_pct"] == pytest.approx(100 * (r["s_per_step_median"] - plain) / plain)
    assert r["speed"]["host_sync"] == "log" and r["trainable_params"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| MFU (measured peak) |" in table and "harness overhead" in table and "--speed host_sync=log" in table
    assert main([*args, "--device", "cpu", "--speed", "host_sync=never"]) == 2
    assert main([*args, "--device", "cpu", "--speed", "turbo=true"]) == 2


def test_peak_is_measured_once_per_device_and_cached(tmp_path, monkeypatch):
    from risbench import peak

    monkeypatch.setenv("RISBENCH_PEAK_CACHE", str(tmp_path / "sub" / "peak.json"))
    calls = []

    def fake_measure(device, dtype=None):
        calls.append(device)
        return {"tflops": 1.5 * len(calls), "dtype": str(dtype), "gemm": "8x8x8", "torch": "t", "measured_at": "now"}

    monkeypatch.setattr(peak, "measure_peak", fake_measure)
    cpu = torch.device("cpu")
    first = peak.device_peak(cpu, "cpu-a")
    again = peak.device_peak(cpu, "cpu-a")
    assert len(calls) == 1 and not first["measured"]["cached"] and again["measured"]["cached"]
    assert again["measured"]["tflops"] == 1.5
    assert peak.device_peak(cpu, "cpu-b")["measured"]["tflops"] == 3.0  # another device name: measured
    assert peak.device_peak(cpu, "cpu-a", remeasure=True)["measured"]["tflops"] == 4.5
    assert len(json.loads((tmp_path / "sub" / "peak.json").read_text())) == 2
    (tmp_path / "sub" / "peak.json").write_text("{half")
    assert not peak.device_peak(cpu, "cpu-a")["measured"]["cached"]  # unreadable cache: measured again
    assert json.loads((tmp_path / "sub" / "peak.json").read_text())


def test_a_cached_peak_the_step_beats_is_measured_again_and_cpu_bf16_has_its_own(tmp_path, monkeypatch):
    from risbench import benchmark, peak

    monkeypatch.setenv("RISBENCH_PEAK_CACHE", str(tmp_path / "peak.json"))
    rates = {torch.float32: [0.01, 0.2], torch.bfloat16: [0.5]}  # the first fp32 one as if measured under load

    def fake_measure(device, dtype=None):
        return {"tflops": rates[dtype].pop(0), "dtype": str(dtype), "gemm": "8x8x8", "torch": "t", "measured_at": "now"}

    monkeypatch.setattr(peak, "measure_peak", fake_measure)
    cpu = torch.device("cpu")
    peak.device_peak(cpu, "cpu-a")  # cached at 0.01 TFLOP/s
    result = {"amp": "off (fp32)", "device": {"name": "cpu-a"}, "achieved_gflop_per_s": 100.0}
    benchmark.add_mfu(result, cpu)
    assert result["peak"]["measured"]["tflops"] == 0.2 and result["mfu_measured"] == pytest.approx(0.5)
    assert "peak_remeasured" in result
    bf16_result = {"amp": "bf16 autocast", "device": {"name": "cpu-a"}, "achieved_gflop_per_s": 100.0}
    bf16 = benchmark.add_mfu(bf16_result, cpu, bf16=True)
    assert bf16["peak"]["measured"]["dtype"] == "torch.bfloat16" and bf16["mfu_measured"] == pytest.approx(0.2)
    assert "peak_remeasured" not in bf16 and rates == {torch.float32: [], torch.bfloat16: []}


def test_nominal_peaks_and_a_real_gemm():
    from risbench.peak import gemm_tflops, mfu, nominal_peak

    assert nominal_peak("NVIDIA H100 80GB HBM3")["tflops"] == 989.0
    assert nominal_peak("NVIDIA H100 PCIe")["tflops"] == 756.0
    assert nominal_peak("NVIDIA H200")["tflops"] == 989.0
    assert nominal_peak("NVIDIA A100-SXM4-80GB")["tflops"] == 312.0
    assert nominal_peak("Tesla V100-SXM2-16GB") is None
    assert gemm_tflops(torch.device("cpu"), 64, torch.float32, 2) > 0
    assert mfu(5e12, 10.0) == 0.5 and mfu(5e12, None) is None


def test_phase_clock_splits_the_step():
    import time as clock_time

    from risbench.step_timing import summarize, time_phased

    def step(clock):
        clock.start()
        clock_time.sleep(0.06)
        clock.mark("data")
        clock_time.sleep(0.01)
        clock.mark("forward")

    s = summarize(time_phased(step, torch.device("cpu"), 3, 1))
    assert s["phase_share"]["data"] > s["phase_share"]["forward"] > 0
    assert s["s_per_step_median"] >= 0.07 and s["phase_ms_mean"]["data"] >= 60


def test_data_wait_warning():
    from risbench.cli.bench import data_warning

    r = {"input": {"batch_size": 4}, "phase_share": {"data": 0.3}}
    assert "waits on the input pipeline, data is 30.0% of the step" in data_warning(r)
    assert data_warning({**r, "phase_share": {"data": 0.01}}) is None


def test_bench_feeds_the_step_from_a_data_loader(tmp_path, monkeypatch):
    from risbench.benchmark import benchmark_step
    from risbench.loader_bench import build_train_loader, loader_throughput

    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    data = {"name": "synthref", "num_train": 6, "num_val": 2, "num_test": 2, "image_size": 40}
    r = benchmark_step(
        "shared-ris-tiny", SMALL, batch_size=2, device="cpu", steps=2, warmup=0, data=data, baseline=False, peak=False
    )
    assert r["data"] == data and r["phase_share"]["data"] > 0 and "mfu_measured" not in r
    from risbench.models.segmenter import build_segmenter
    from risbench.spec import resolve_model_spec

    net = build_segmenter(resolve_model_spec("shared-ris-tiny", SMALL))
    batches = build_train_loader(data, net, batch_size=4, text_len=10)
    first = next(batches)
    assert first["image"].shape == (4, 3, 32, 32) and first["text_ids"].shape == (4, 10)
    speed = loader_throughput(batches, 4, 4)  # 4 batches of 3 per epoch: crosses into the next epoch
    assert speed["images_per_s"] > 0 and speed["ms_per_image"] == pytest.approx(1000 / speed["images_per_s"])


def test_sdpa_kernel_check_on_cpu():
    from risbench.sdpa_check import check_attention

    r = check_attention(1, 2, 24, 16, 8, 3, torch.device("cpu"), torch.float32)
    assert set(r["cases"]) == {"bool mask", "additive float mask", "no mask"}
    for case in r["cases"].values():
        assert case["backends"]["math"] == "ok" and case["dispatched"] in ("flash", "math")
        assert case["backends"]["efficient"] != "ok"  # no memory-efficient kernel on CPU
