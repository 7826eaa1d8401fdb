"""DETRIS through the harness: `risbench train` on a tiny dual config (CLIP BPE trained on SynthRef, Adam, step
schedule), the recipe's learning rate at each epoch boundary, the letterbox and its inverse at evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from risbench.config import registry_dir
from risbench.data.transforms import ResizeNormalize, input_resolution_mask, unmap_prediction
from risbench.models.encoders.dual import DualEncoder
from risbench.spec import load_config
from risbench.train.config import TrainConfig, resolve_run_config
from risbench.train.optim import LRSchedule

TINY_DUAL = {
    "encoder": {
        "name": "dual",
        **DualEncoder.tiny_options,
        "text": {**DualEncoder.tiny_options["text"], "max_text_len": 10},
        "resize": "letterbox",
    },
    "fpn": {"name": "detris", "dim": 16, "num_heads": 2},
    "decoder": {"name": "cris", "num_layers": 1, "num_heads": 2, "dim_ffn": 16},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_risbench_train_runs_a_tiny_dual_config(tmp_path: Path) -> None:
    from risbench.cli.main import main

    recipe = load_config(registry_dir() / "recipes" / "detris.yaml")
    train = {k: recipe["train"][k] for k in ("optimizer", "weight_decay", "betas", "clip_grad", "loss", "gamma")}
    cfg = {
        "model": TINY_DUAL,
        # 4 scenes x 2 refs = 8 training refs: 2 steps per epoch at batch 4; the lr drops x0.1 at epoch 1
        "data": {"name": "synthref", "num_train": 4, "num_val": 1, "num_test": 1, "image_size": 40},
        "tokenizer": {"max_len": 10, "cache_dir": str(tmp_path / "tok")},
        "train": {
            **train,
            "lr": 1e-3,
            "schedule": "step",
            "milestones": [1],
            "max_steps": 3,
            "batch_size": 4,
            "log_every": 1,
            "val_every": 0,
            "threads": 1,
        },
        "eval": {"splits": ["val"], "batch_size": 8},
        "run_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "tiny_dual.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--quiet"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log if "lr" in r] == pytest.approx([1e-3, 1e-3, 1e-4])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "oIoU" in json.dumps(metrics) and list((tmp_path / "tok").glob("clip-bpe-*.json"))
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["train"]["optimizer"] == "adam" and resolved["model"]["encoder"]["resize"] == "letterbox"


def test_detris_recipe_lr_at_each_epoch_boundary() -> None:
    recipe = load_config(registry_dir() / "recipes" / "detris.yaml")
    cfg, _ = resolve_run_config({"model": "detris-b", "data": "synthref", **{k: recipe[k] for k in ("train", "eval")}})
    t = cfg.train
    assert (t.optimizer, t.lr, t.weight_decay, t.batch_size, t.epochs, t.milestones) == (
        "adam",
        1e-4,
        0.0,
        32,
        65,
        [35, 55],
    )
    assert cfg.train.loss.name == "bce" and t.clip_grad is None and recipe["tokenizer"]["max_len"] == 17
    per_epoch = 7
    s = LRSchedule(t, t.epochs * per_epoch, per_epoch)
    for epoch in range(t.epochs):
        want = 1e-4 * (1.0 if epoch < 35 else 0.1 if epoch < 55 else 0.01)
        assert s.lr_at(epoch * per_epoch) == pytest.approx(want), epoch  # first step of the epoch
        assert s.lr_at(epoch * per_epoch + per_epoch - 1) == pytest.approx(want), epoch  # its last step
    model = torch.nn.Linear(2, 2)
    from risbench.train.optim import build_optimizer

    assert type(build_optimizer(model, t)) is torch.optim.Adam
    assert type(build_optimizer(model, TrainConfig())) is torch.optim.AdamW


@pytest.mark.parametrize(
    "train",
    [
        {"schedule": "step"},  # no milestones
        {"milestones": [3]},  # milestones without schedule step
        {"schedule": "step", "milestones": [5, 3]},
        {"schedule": "step", "milestones": [0]},
        {"optimizer": "sgd"},
        {"schedule": "step", "milestones": [3], "gamma": 0},
    ],
)
def test_bad_recipe_fields_fail_in_one_line(train: dict) -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig(**train)
    assert "\n" not in str(info.value)


def test_letterbox_round_trip_on_a_non_square_image() -> None:
    rng = np.random.default_rng(0)
    t = ResizeNormalize(56, (0.5,) * 3, (0.5,) * 3, "letterbox")
    # 112 x 80 -> scale 1/2: content 56 x 40 at column 8; a mask of 2 x 2 blocks survives exactly
    image = rng.integers(0, 256, (112, 80, 3), dtype=np.uint8)
    mask = np.kron(rng.random((56, 40)) > 0.6, np.ones((2, 2))).astype(np.uint8)
    img, target, meta = t(image, mask)
    assert meta["box"] == (0, 8, 56, 40) and img.shape == (3, 56, 56)
    assert (img[:, :, :8] == 0).all() and (img[:, :, 48:] == 0).all()  # padding = the mean colour
    assert (target[:, :8] == 0).all() and (target[:, 48:] == 0).all()
    full = {"orig_size": (112, 80), "resize": meta, "orig_mask": mask}
    assert np.array_equal((unmap_prediction(target, full) > 0.5).numpy(), mask > 0)
    assert np.array_equal(input_resolution_mask(full, 56), target.numpy())
    # a prediction at 1/4 of the input, a non-integer scale (70 x 101 -> 56): exact up to resampling at edges
    image = rng.integers(0, 256, (70, 101, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:70, :101]
    mask = (((yy - 35) / 25) ** 2 + ((xx - 45) / 30) ** 2 < 1).astype(np.uint8)
    _, target, meta = t(image, mask)
    top, left, h, w = meta["box"]
    assert (h, w) == (39, 56) and top == 8 and left == 0
    small = torch.nn.functional.interpolate(target[None, None], size=(14, 14), mode="area")[0, 0]
    back = unmap_prediction(small, {"orig_size": (70, 101), "resize": meta}) > 0.5
    assert back.shape == (70, 101)
    wrong = back.numpy() != (mask > 0)
    assert wrong.mean() < 0.03
    edge = np.abs(np.sqrt(((yy - 35) / 25) ** 2 + ((xx - 45) / 30) ** 2) - 1) < 0.25
    assert not (wrong & ~edge).any()  # every disagreement lies at the boundary


def _tiny_config(tmp_path: Path) -> Path:
    cfg = {
        "model": TINY_DUAL,
        "data": {"name": "synthref", "num_train": 2, "num_val": 1, "num_test": 1, "image_size": 40},
        "tokenizer": {"max_len": 10, "cache_dir": str(tmp_path / "tok")},
        "train": {"threads": 1},
        "eval": {"splits": ["val"], "batch_size": 8},
        "run_dir": str(tmp_path / "released"),
    }
    path = tmp_path / "tiny_dual.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_eval_a_checkpoint_file_from_a_run_config(tmp_path: Path, capsys) -> None:
    """`risbench eval CONFIG --checkpoint FILE`: risbench's layout evaluates; DETRIS's official layout that does
    not fit the model (its keys, read off the official code, tests/data/) ends in one line and exit 2."""
    from risbench.cli.main import main
    from risbench.models.segmenter import build_segmenter

    config = _tiny_config(tmp_path)
    _, resolved = resolve_run_config(yaml.safe_load(config.read_text()))
    ours = tmp_path / "ours.pt"
    torch.save({"model": build_segmenter(resolved["model"]).state_dict()}, ours)
    assert main(["eval", str(config), "--checkpoint", str(ours), "--set", "eval.threshold=0.5"]) == 0
    written = json.loads((tmp_path / "released" / "evals" / "val_t0.5_original_ckpt-ours.json").read_text())
    assert written["checkpoint"] == str(ours) and written["splits"]["val"]["num_sentences"] > 0
    capsys.readouterr()

    shapes = json.loads((Path(__file__).parent / "data" / "detris_b_official_keys.json").read_text())
    official = tmp_path / "best_model.pth"  # the official layout; its large tensors shrunk (no 700 MB file)
    sd = {f"module.{k}": torch.zeros(v if np.prod(v) < 2e6 else [1] * len(v)) for k, v in shapes.items()}
    torch.save({"epoch": 65, "state_dict": sd}, official)
    image = tmp_path / "scene.png"  # a readable image: the checkpoint is what must be refused
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    cases = [
        (["eval", str(config), "--checkpoint", str(official)], "does not fit the model"),
        (["predict", str(config), str(image), "the red circle", "--checkpoint", str(official)], "does not fit"),
        (["eval", str(config)], "give --checkpoint PATH"),
        (["eval", str(tmp_path / "released"), "--set", "train.lr=1"], "--set changes a run config"),
    ]
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    cases.append((["eval", str(config), "--checkpoint", str(tmp_path / "junk.pth")], "junk.pth: not a"))
    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "other.pth")
    cases.append((["eval", str(config), "--checkpoint", str(tmp_path / "other.pth")], "neither a risbench"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, (argv, err)


def test_detris_readme_numbers_beside_ours() -> None:
    import pandas as pd

    from risbench.runner.experiment import load_experiment
    from risbench.runner.tables import build_table, load_paper_table

    val, testa = load_paper_table("DETRIS", "val"), load_paper_table("DETRIS", "testA")
    assert val.loc["DETRIS-B / RefCOCO", "oiou"] == 76.0 and testa.loc["DETRIS-B / RefCOCO", "oiou"] == 78.2
    assert val.loc["DETRIS-L / G-Ref (Google)", "oiou"] == 67.9
    assert load_paper_table("DETRIS", "test").loc["DETRIS-L / G-Ref (UMD)", "oiou"] == 70.2
    iv = load_paper_table("IV")  # a Shared-RIS table: no dataset / split, as before
    assert iv.loc["shared", "oiou"] == 68.42 and iv["split"].isna().all()
    exp = load_experiment(Path(__file__).parents[1] / "experiments" / "paper" / "detris.yaml")
    assert len(exp.runs) == 8 and len({r.run_id for r in exp.runs}) == 8
    data = {r.variant: (r.config["data"]["dataset"], r.config["data"]["split_by"]) for r in exp.runs}
    assert data["detris_b_refcoco+"] == ("refcoco+", "unc")
    assert data["detris_l_refcocog_google"] == ("refcocog", "google")
    large = next(r for r in exp.runs if r.variant == "detris_l_refcoco")
    assert (large.config["train"]["epochs"], large.config["train"]["milestones"]) == (50, [35])
    assert large.config["model"]["encoder"]["resize"] == "letterbox" and large.config["tokenizer"]["max_len"] == 17
    tidy = pd.DataFrame(
        [
            {"experiment": exp.name, "run_id": r.run_id, "variant": r.variant, "seed": 0, "index": i, "split": "val",
             "metric": "oiou", "value": 70.0, "mtime": 0.0, "run_dir": ""}
            for i, r in enumerate(exp.runs)
        ]
    )  # fmt: skip
    table = build_table(tidy, exp.meta(), replicates=0)
    assert table.paper.loc["detris_b_refcoco+", "oiou"] == 68.9 and table.paper.loc["detris_l_refcoco", "oiou"] == 77.3
