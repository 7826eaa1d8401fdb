"""Training runs end to end on a shrunken shared-ris-tiny and tiny SynthRef: files, skip, resume
determinism (a run interrupted after k steps and resumed ends with exactly the weights and metrics of an
uninterrupted one), config validation and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from risbench.errors import RisbenchError

TINY_MODEL = {
    "preset": "shared-ris-tiny",
    "encoder": {"image_size": 32, "embed_dim": 32, "num_heads": 2, "depth": 2, "out_indices": [1, 2], "drop_path": 0.1},
    "fpn": {"dim": 32, "num_heads": 2},
    "decoder": {"num_heads": 2, "head": {"conv_dim": 16}},
}


def tiny_config(tmp_path: Path, **train) -> dict:
    return {
        "model": TINY_MODEL,
        # 6 scenes x 2 refs = 12 training refs: 3 steps per epoch at batch 4, so 5 steps cross an epoch
        "data": {"name": "synthref", "num_train": 6, "num_val": 2, "num_test": 2, "image_size": 40},
        "tokenizer": {"max_len": 10, "vocab_size": 200, "cache_dir": str(tmp_path / "tok")},
        "train": {
            "max_steps": 5,
            "batch_size": 4,
            "lr": 2e-3,
            "warmup_steps": 2,
            "log_every": 1,
            "val_every": 2,
            "threads": 1,  # tiny models: one thread is fastest, and spins less on a busy machine
            **train,
        },
        "eval": {"splits": ["val"], "batch_size": 8},
        "seed": 3,
    }


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from risbench.train.api import train_run

    tmp = tmp_path_factory.mktemp("full")
    cfg = tiny_config(tmp)
    metrics = train_run(cfg, tmp / "run", quiet=True)
    return cfg, tmp / "run", metrics


def test_run_writes_its_files(finished_run):
    cfg, run_dir, metrics = finished_run
    for name in ("config.yaml", "train_log.jsonl", "metrics.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["encoder"]["name"] == "beit3" and saved["model"]["encoder"]["image_size"] == 32
    loss = {"name": "bce_dice", "bce_weight": 2.0, "dice_weight": 0.5, "dice_eps": 1.0}
    assert saved["train"]["loss"] == {**loss, "existence_weight": 1.0, "negative_weight": 1.0}  # the trainer's weights
    log = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in log if "loss" in x]
    assert steps == [1, 2, 3, 4, 5]
    assert all({"loss_bce", "loss_dice", "lr", "samples_per_s", "train_seconds"} <= set(x) for x in log if "loss" in x)
    val = metrics["splits"]["val"]
    assert val["split"] == "val" and val["threshold"] == 0.35 and val["resolution"] == "original"
    assert val["num_sentences"] == 2 * 2 * 3
    assert {"oIoU", "mIoU", "P@0.5", "P@0.9", "iou_by_size"} <= set(val)
    prov = metrics["provenance"]
    assert prov["weights"] == "random" and prov["seed"] == 3 and prov["world_size"] == 1
    assert prov["precision"] == "fp32"  # amp auto: bf16 on CUDA only
    assert {"git", "versions", "device", "tokenizer", "image_size", "data", "timings"} <= set(prov)
    assert metrics["train"]["steps"] == 5 and metrics["train"]["epochs_completed"] == 1


def test_finished_run_is_skipped_and_other_config_refused(finished_run):
    from risbench.train.api import train_run

    cfg, run_dir, metrics = finished_run
    before = (run_dir / "metrics.json").stat().st_mtime_ns
    assert train_run(cfg, run_dir, quiet=True) == metrics
    assert (run_dir / "metrics.json").stat().st_mtime_ns == before
    other = tiny_config(Path(cfg["tokenizer"]["cache_dir"]).parent, lr=1e-3)
    with pytest.raises(RisbenchError, match="different config"):
        train_run(other, run_dir, quiet=True)


def test_resume_is_exact(finished_run, tmp_path):
    from risbench.train.api import train_run
    from risbench.train.checkpoint import load_checkpoint

    cfg, full_dir, full = finished_run
    run_dir = tmp_path / "resumed"
    partial = train_run(cfg, run_dir, quiet=True, interrupt_after=3)  # stops inside epoch 1
    assert partial == {"interrupted": True, "step": 3}
    assert not (run_dir / "metrics.json").exists()
    resumed = train_run(cfg, run_dir, quiet=True)
    assert resumed["splits"] == full["splits"]
    assert resumed["train"]["val_history"][-1]["val"] == full["train"]["val_history"][-1]["val"]
    a = load_checkpoint(full_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = lambda d: [json.loads(x).get("loss") for x in (d / "train_log.jsonl").read_text().splitlines()]
    assert losses(run_dir) == losses(full_dir)
    name = "per_sentence.val.csv.gz"
    assert (run_dir / name).read_bytes() == (full_dir / name).read_bytes()


def test_bad_configs_fail_early(tmp_path):
    from risbench.train.config import apply_run_overrides, resolve_run_config

    cfg = tiny_config(tmp_path)
    with pytest.raises(RisbenchError, match="schedule"):
        resolve_run_config(apply_run_overrides(cfg, ["train.schedule=cosin"]))
    with pytest.raises(RisbenchError, match="did you mean"):
        resolve_run_config(apply_run_overrides(cfg, ["train.loss.bce_wieght=1"]))
    with pytest.raises(RisbenchError):
        apply_run_overrides(cfg, ["trian.lr=1"])
    _, resolved = resolve_run_config(apply_run_overrides(cfg, ["model.fpn.dim=64", "train.lr=0.01"]))
    assert resolved["model"]["fpn"]["dim"] == 64 and resolved["train"]["lr"] == 0.01


def test_schedule_warmup_then_cosine():
    from risbench.train.config import TrainConfig
    from risbench.train.optim import LRSchedule

    s = LRSchedule(TrainConfig(lr=1.0, warmup_steps=2, min_lr=0.0), total_steps=6)
    lrs = [s.lr_at(i) for i in range(6)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == pytest.approx(1.0) and lrs[4] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert s.lr_at(2, time_progress=1.0) == pytest.approx(0.0)


def test_global_batch_sampler_shards_the_global_batch():
    from risbench.train.distributed import GlobalBatchSampler

    one = list(GlobalBatchSampler(10, 4, seed=1, epoch=2))
    r0 = list(GlobalBatchSampler(10, 4, rank=0, world_size=2, seed=1, epoch=2))
    r1 = list(GlobalBatchSampler(10, 4, rank=1, world_size=2, seed=1, epoch=2))
    assert len(one) == 2 and [a + b for a, b in zip(r0, r1, strict=True)] == one
    assert list(GlobalBatchSampler(10, 4, seed=1, epoch=2, start_batch=1)) == one[1:]
    assert list(GlobalBatchSampler(10, 4, seed=1, epoch=3)) != one


def test_cli_eval_and_predict(finished_run, tmp_path):
    from PIL import Image

    from risbench.cli.main import main

    _, run_dir, metrics = finished_run
    assert main(["eval", str(run_dir), "--resolution", "input", "--threshold", "0.5", "--swap-text"]) == 0
    written = json.loads((run_dir / "evals" / "val_t0.5_input_swapped.json").read_text())
    val = written["splits"]["val"]
    assert (val["resolution"], val["threshold"], val["text"]) == ("input", 0.5, "swapped")
    assert main(["eval", str(run_dir), "--per-sentence"]) == 0
    import pandas as pd

    rows = pd.read_csv(run_dir / "evals" / "val_t0.35_original.val.csv")
    summary = json.loads((run_dir / "evals" / "val_t0.35_original.json").read_text())["splits"]["val"]
    assert len(rows) == summary["num_sentences"] and rows["sentence"].str.len().min() > 0
    assert rows["iou"].mean() == pytest.approx(summary["mIoU"], abs=1e-3)
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((24, 30, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "overlay.png"
    assert main(["predict", str(run_dir), str(img), "the red circle", "--out", str(out)]) == 0
    figure = Image.open(out)  # input and result side by side, upscaled 16x (shorter side 24 -> 384)
    assert figure.width == 2 * 30 * 16 + 3 * 8 and figure.height > 24 * 16


def test_per_sentence_file_of_the_final_evaluation(finished_run):
    from risbench.cli.main import main
    from risbench.train.sentences import read_per_sentence

    _, run_dir, metrics = finished_run
    path = run_dir / "per_sentence.val.csv.gz"
    frame = read_per_sentence(path)
    val = metrics["splits"]["val"]
    assert frame is not None and len(frame) == val["num_sentences"]
    assert list(frame["index"]) == list(range(len(frame)))
    assert frame["sent_id"].notna().all() and frame["sent_id"].is_unique
    assert set(frame["threshold"]) == {0.35} and set(frame["resolution"]) == {"original"}
    assert 100 * frame["inter"].sum() / frame["union"].sum() == pytest.approx(val["oIoU"], rel=1e-12)
    before = path.read_bytes()
    assert main(["eval", str(run_dir), "--max-samples", "3"]) == 0  # a partial evaluation leaves it alone
    assert path.read_bytes() == before
    path.unlink()
    assert main(["eval", str(run_dir), "--max-samples", "3"]) == 0
    assert not path.exists()
    assert main(["eval", str(run_dir), "--threshold", "0.5"]) == 0  # other settings: not the run's file
    assert not path.exists()
    assert main(["eval", str(run_dir)]) == 0  # a full evaluation with the run's settings adds it back
    assert path.read_bytes() == before


def test_table_of_real_runs_has_the_statistics(finished_run, tmp_path, capsys):
    """`risbench table` over two copies of the real run: the Δ columns come from its per-sentence file
    (identical rows: a difference of exactly 0, not marked)."""
    import shutil

    from risbench.cli.main import main

    _, run_dir, metrics = finished_run
    for name in ("base-s3-aaaaaa", "copy-s3-bbbbbb"):
        (tmp_path / "exp" / name).mkdir(parents=True)
        for f in ("config.yaml", "metrics.json", "per_sentence.val.csv.gz"):
            shutil.copy(run_dir / f, tmp_path / "exp" / name / f)
    assert main(["table", str(tmp_path / "exp"), "--reference", "base"]) == 0
    out = capsys.readouterr().out
    assert "| Δ oIoU | Δ mIoU |" in out.splitlines()[0]
    copy = next(line for line in out.splitlines() if line.startswith("| copy "))
    assert copy.endswith("| +0.00 [0.00, 0.00] | +0.00 [0.00, 0.00] |")
    assert f"{metrics['splits']['val']['oIoU']:.2f}" in copy
    assert "paired bootstrap over 12 sentences and 1 seed, 2000 replicates" in out


def test_cli_curve_lists_every_validation(finished_run, tmp_path, capsys):
    from risbench.cli.main import main

    _, run_dir, _ = finished_run
    vals = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    vals = [v for v in vals if "val" in v]
    out = tmp_path / "curve.md"
    assert main(["curve", str(run_dir), str(run_dir), "--name", "a", "--name", "b", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "step" not in line]
    assert [int(r.split("|")[1]) for r in rows] == [v["step"] for v in vals]
    assert f"{vals[-1]['val']['oIoU']:.2f}".rstrip("0").rstrip(".") in rows[-1]
    assert main(["curve", str(tmp_path)]) == 2
    assert "train_log.jsonl not found" in capsys.readouterr().err


def test_time_budget_stops_training(tmp_path):
    from risbench.train.api import train_run

    cfg = tiny_config(tmp_path, max_steps=None, epochs=50, max_minutes=1e-4, val_every=None)
    cfg["eval"]["val_split"] = None
    metrics = train_run(cfg, tmp_path / "run", quiet=True)
    assert metrics["train"]["steps"] == 1  # the first step already exceeds a 6 ms budget
    assert metrics["splits"]["val"]["num_sentences"] == 12


def test_figure_grid_and_attention(finished_run, tmp_path, capsys):
    """`risbench figure`: a qualitative grid of two runs and the attention maps of one, as PNG and PDF."""
    from PIL import Image

    from risbench.cli.main import main

    _, run_dir, _ = finished_run
    out = tmp_path / "grid.png"
    args = ["figure", "grid", str(run_dir), str(run_dir), "--name", "a", "--name", "b", "-n", "2"]
    assert main([*args, "--pick", "disagree", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "grid.pdf").read_bytes()[:5] == b"%PDF-"
    assert "(sentences 0, 1)" in capsys.readouterr().out  # identical runs: no spread, sentence order
    with Image.open(out) as grid:  # 2 sentences x (image, ground truth, 2 runs) at 1.9 x 2.25 in, 200 dpi,
        width, height = grid.size  # then cropped to its content (bbox_inches="tight")
        assert abs(width - 1.9 * 4 * 200) < 0.05 * 1520 and abs(height - 2.25 * 2 * 200) < 0.05 * 900
    att = tmp_path / "att"
    assert main(["figure", "attention", str(run_dir), "--index", "1", "--out", str(att)]) == 0
    assert (tmp_path / "att.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "att.pdf").is_file()
    with Image.open(tmp_path / "att.png") as maps:
        assert maps.size[0] > 0 and maps.size[1] > 0 and maps.getextrema() != ((0, 0),) * len(maps.getbands())
    assert "encoder layer 1, encoder layer 2, fpn stage 1, fpn stage 2" in capsys.readouterr().out
    assert main(["figure", "attention", str(run_dir), "--layer", "decoder layer 9", "--out", str(att)]) == 2
    assert "kept: encoder layer 1" in capsys.readouterr().err
    assert main(["figure", "grid", str(run_dir), "--pick", "disagree", "--out", str(out)]) == 2


def test_cpu_bf16_autocast_runs_are_reproducible(tmp_path):
    """The CPU fine-tuning recipe trains under bf16 autocast: the same seed gives the same metrics and
    weights, and the weights differ from the fp32 run's (the switch is real)."""
    from risbench.train.api import train_run
    from risbench.train.checkpoint import load_checkpoint

    runs = {}
    for name, amp in (("a", "bf16"), ("b", "bf16"), ("fp32", "off")):
        cfg = tiny_config(tmp_path, amp=amp, max_steps=3, val_every=0)
        runs[name] = (train_run(cfg, tmp_path / name, quiet=True), tmp_path / name)
    (ma, da), (mb, db), (_, df) = runs["a"], runs["b"], runs["fp32"]
    assert ma["splits"] == mb["splits"]
    assert ma["provenance"]["precision"] == "bf16 autocast" and runs["fp32"][0]["provenance"]["precision"] == "fp32"
    a, b, f = (load_checkpoint(d / "checkpoints" / "last.pt")["model"] for d in (da, db, df))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the weights, not the metrics: a tiny 3-step model can score the same in both precisions
    assert not all(torch.equal(a[k], f[k]) for k in a)
