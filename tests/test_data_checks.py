"""Data checked before compute (issue 12, item 5) and the REFER API's image layout (item 8): `data check
--deep` decodes every image and mask and checks annotation bounds; `train` loads a first batch of every
split before step 1, so a missing or truncated image fails at once with the file named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_train import tiny_config

from risbench.cli.main import main
from risbench.data.refer import ReferConfig, ReferData


@pytest.fixture
def refer_copy(tmp_path) -> tuple[Path, dict]:
    """A tiny SynthRef exported to the REFER layout: (its data YAML, the data config)."""
    from risbench.data.export import export_refer
    from risbench.data.synthref import SynthRefConfig

    data_cfg = export_refer(SynthRefConfig(num_train=6, num_val=2, num_test=2, image_size=40), tmp_path / "d")
    return tmp_path / "d" / f"{data_cfg['dataset']}.yaml", data_cfg


def _image_of(data_cfg: dict, split: str) -> Path:
    data = ReferData(ReferConfig(**{k: v for k, v in data_cfg.items() if k not in ("name", "description")}))
    return data.image_path(data.split_refs(split)[0]["image_id"])


def _one_line(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_deep_check_decodes_images_and_checks_annotation_bounds(refer_copy, capsys):
    path, data_cfg = refer_copy
    assert main(["data", "check", "--dataset", str(path), "--deep"]) == 0
    assert "deep check ok: 10 images decoded" in capsys.readouterr().out

    image = _image_of(data_cfg, "val")
    image.write_bytes(image.read_bytes()[:200])  # truncated
    assert main(["data", "check", "--dataset", str(path)]) == 0  # the layout alone does not see it
    capsys.readouterr()
    err = _one_line(capsys, ["data", "check", "--dataset", str(path), "--deep"])
    assert f"1 problems, first: {image}: not a readable image" in err, err

    shutil.copy(_image_of(data_cfg, "train"), image)  # a whole image again (of another scene, same size)
    instances = Path(data_cfg["root"]) / data_cfg["folder"] / "instances.json"
    inst = json.loads(instances.read_text())
    data = ReferData(ReferConfig(**{k: v for k, v in data_cfg.items() if k not in ("name", "description")}))
    ann_id = data.split_refs("train")[0]["ann_id"]
    ann = next(a for a in inst["annotations"] if a["id"] == ann_id)
    ann["bbox"] = [30.0, 30.0, 25.0, 5.0]  # ends at x = 55 in a 40-pixel image
    instances.write_text(json.dumps(inst))
    err = _one_line(capsys, ["data", "check", "--dataset", str(path), "--deep"])
    assert f"annotation {ann['id']} (image {ann['image_id']}): bbox [30.0, 30.0, 25.0, 5.0] is outside" in err, err


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_train_checks_a_first_batch_of_every_split_before_step_1(refer_copy, tmp_path, capsys, damage):
    path, data_cfg = refer_copy
    image = _image_of(data_cfg, "val")  # used by validation only: today's failure at the first validation
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[:200])
    cfg = {**tiny_config(tmp_path, max_steps=2, val_every=1), "data": str(path)}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    err = _one_line(capsys, ["train", str(config), "--run-dir", str(run), "--quiet"])
    expected = f"image not found: {image}" if damage == "missing" else f"{image}: not a readable image"
    assert expected in err, err
    assert not run.exists()  # failed before step 1: no checkpoint, no log, no folder


def test_the_refer_api_image_layout_is_found_and_neither_gets_a_hint(refer_copy, capsys):
    path, data_cfg = refer_copy
    root = Path(data_cfg["root"])
    ours = root / data_cfg["image_dir"]
    theirs = root / "images" / "mscoco" / "images" / "train2014"  # LAVT / CGFormer / DMMI set-ups
    theirs.parent.mkdir(parents=True)
    shutil.move(str(ours), str(theirs))
    default = {k: v for k, v in data_cfg.items() if k != "image_dir"}  # the default image_dir
    path.write_text(yaml.safe_dump(default))
    assert main(["data", "check", "--dataset", str(path)]) == 0
    assert f"images {theirs}/" in capsys.readouterr().out

    shutil.move(str(theirs), str(root / "elsewhere"))
    err = _one_line(capsys, ["data", "check", "--dataset", str(path)])
    assert f"neither {root / 'images/train2014'}/ (risbench) nor {theirs}/ (the REFER API's) exists" in err, err
