"""`risbench pretrain-probe`: masked-word accuracy per word class, own image against a swapped one."""

from __future__ import annotations

import json

import torch
from test_pretrain import isolated_cache, tiny_pretrain  # noqa: F401  (the fixture is autouse there, used here)

from risbench.cli.main import main
from risbench.train.probe import class_accuracy


def test_class_accuracy_counts_meanings_not_words():
    """Ids 10/11/12 are one class with meanings 0, 0, 1 (two synonyms and a third word). A head that always
    prefers id 11 is right on every target of meaning 0 (ids 10 and 11), wrong on id 12."""
    ids = {"size": {10: 0, 11: 0, 12: 1}}
    text = torch.tensor([[0, 10, 2], [0, 11, 2], [0, 12, 2], [0, 12, 2]])
    batch = {"image": torch.zeros(4, 3, 8, 8), "text_ids": text, "text_pad_mask": torch.zeros_like(text).bool()}
    seen = []

    def logits_fn(image, masked_ids, pad, masked):
        seen.append(masked_ids)
        out = torch.zeros(int(masked.sum()), 20)
        out[:, 11] = 1.0
        return out

    result = class_accuracy(logits_fn, [batch], ids, mask_id=3)["size"]
    assert result == {"meanings": 2, "chance": 50.0, "masked": 4, "own_image": 50.0, "swapped_image": 50.0}
    assert all((m[:, 1] == 3).all() for m in seen)  # the class's words were masked before the model saw them


def test_class_accuracy_uses_the_swapped_image():
    """A head that reads the answer off the image: right with the own image, wrong with the next one's."""
    ids = {"colour": {10: 0, 11: 1}}
    text = torch.tensor([[0, 10, 2], [0, 11, 2]])
    image = torch.stack([torch.full((3, 4, 4), 0.0), torch.full((3, 4, 4), 1.0)])
    batch = {"image": image, "text_ids": text, "text_pad_mask": torch.zeros_like(text).bool()}

    def logits_fn(image, masked_ids, pad, masked):
        out = torch.zeros(image.shape[0], 20)
        out[:, 10] = 1.0 - image[:, 0, 0, 0]
        out[:, 11] = image[:, 0, 0, 0]
        return out

    result = class_accuracy(logits_fn, [batch], ids, mask_id=3)["colour"]
    assert result["own_image"] == 100.0 and result["swapped_image"] == 0.0


def test_probe_of_a_pretrained_artifact(tmp_path, capsys):
    from risbench.train.pretrain import pretrain

    art = pretrain(tiny_pretrain(tmp_path), quiet=True)
    out = tmp_path / "probe.json"
    assert main(["pretrain-probe", str(art.directory), "--samples", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["artifact"] == art.directory.name and result["samples"] == 2  # the val split's 2 scenes
    assert result["command"].startswith("risbench pretrain-probe") and "commit" in result["provenance"]["git"]
    classes = result["classes"]
    assert set(classes) == {"colour", "shape", "size"}
    # 6 colours, 6 shapes, 2 sizes; the test's 200-word tokenizer splits some words, which are reported
    assert classes["colour"]["meanings"] + len(classes["colour"]["left_out"]) == 6
    assert classes["shape"]["meanings"] + len(classes["shape"]["left_out"]) == 6
    for r in classes.values():
        assert r["chance"] == round(100 / r["meanings"], 2)
        assert r["masked"] >= 1 and 0.0 <= r["own_image"] <= 100.0 and 0.0 <= r["swapped_image"] <= 100.0
    assert "shape" in capsys.readouterr().out
    md = out.with_suffix(".md").read_text()
    assert "| shape | " in md and result["command"] in md


def test_probe_of_a_folder_that_is_not_an_artifact(tmp_path, capsys):
    assert main(["pretrain-probe", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no pretrain.json" in err[0] and "pretrained/<name>-<hash>/" in err[0]
