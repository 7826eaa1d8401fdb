"""`dual_unimodal`: unimodal pretraining of the Swin + BERT dual encoder (SimMIM on Swin, masked LM on BERT):
the loss falls, the masking statistics, no cross-modal path, the export in each tower's official layout
(exact round trip), the artifact through `risbench pretrain`, the registry config, and bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from risbench.cli.main import main

# a Swin + BERT small enough for a test: 4 stages at 32 px (patch 2), one block each, a 1-layer BERT
TINY_DUAL = {
    "name": "swin_bert",
    "size": "tiny-test",
    "image_size": 32,
    "patch_size": 2,
    "window_size": 4,
    "swin_embed_dim": 16,
    "swin_depths": [1, 1, 1, 1],
    "swin_heads": [1, 1, 2, 2],
    "bert_hidden": 32,
    "bert_layers": 1,
    "bert_heads": 2,
    "bert_ffn": 64,
    "vocab_size": 200,
    "out_indices": [2, 3, 4],
    "drop_path": 0.0,
}
TEXTS = ["a small red circle and a big blue star", "the green triangle on the left", "a yellow square"] * 20


def tiny_pretrain(tmp_path: Path, **train) -> dict:
    """test_pretrain's tiny BEiT-3 pretraining config, with the tiny dual encoder and its objective."""
    from test_pretrain import tiny_pretrain as tiny_beit3_pretrain

    cfg = tiny_beit3_pretrain(tmp_path, **{"max_steps": 3, **train})
    return {
        **cfg,
        "name": "tiny-dual",
        "model": {"preset": "dual-ris-tiny", "encoder": TINY_DUAL},
        "objective": {"name": "dual_unimodal", "mask_patch_size": 8},
    }


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _objective(tmp_path: Path, **options):
    from risbench.data.tokenizers import build_tokenizer
    from risbench.models.encoders.swin_bert import SwinBertConfig, SwinBertEncoder
    from risbench.models.encoders.swin_bert_pretrain import DualUnimodal, DualUnimodalConfig

    torch.manual_seed(0)
    tok = build_tokenizer("wordpiece", None, TEXTS, tmp_path / "tok", 200)
    enc_options = {k: v for k, v in TINY_DUAL.items() if k != "name"}
    encoder = SwinBertEncoder(SwinBertConfig(**enc_options))
    objective = DualUnimodal(DualUnimodalConfig(**{"mask_patch_size": 8, **options}), encoder, tok)
    ids, pad = tok.encode(TEXTS[:4], 12)
    batch = {"image": torch.randn(4, 3, 32, 32), "text_ids": ids, "text_pad_mask": pad}
    return objective, tok, batch


def _write(files: dict, directory: Path) -> None:
    for name, payload in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(payload, bytes):
            (directory / name).write_bytes(payload)
        else:
            torch.save(payload, directory / name)


def test_both_losses_fall_on_a_fixed_batch(tmp_path):
    objective, _, batch = _objective(tmp_path)
    opt = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    curve = []
    for _ in range(8):
        torch.manual_seed(1)  # the same masks every step
        loss, logs = objective(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(logs)
    assert curve[-1]["loss_mim"] < 0.9 * curve[0]["loss_mim"], curve
    assert curve[-1]["loss_mlm"] < 0.9 * curve[0]["loss_mlm"], curve
    assert set(curve[0]) == {"loss_mim", "loss_mlm", "acc_mlm"}


def test_text_masking_follows_bert():
    from risbench.models.encoders.swin_bert_pretrain import DualUnimodalConfig, bert_mlm_inputs

    torch.manual_seed(0)
    b, length, vocab, mask_id = 4000, 24, 500, 4
    ids = torch.randint(10, vocab, (b, length))
    lengths = torch.randint(1, length + 1, (b, 1))
    words = torch.arange(length)[None] < lengths
    corrupted, chosen = bert_mlm_inputs(ids, words, DualUnimodalConfig(), mask_id, vocab)
    assert not (chosen & ~words).any() and torch.equal(corrupted[~chosen], ids[~chosen])
    want = (lengths.squeeze(1).float() * 0.15).round().long().clamp(min=1)
    assert torch.equal(chosen.sum(1), want)  # 15% of each text's words, at least one
    n = chosen.sum().item()
    masked = (corrupted[chosen] == mask_id).sum().item() / n
    kept = (corrupted[chosen] == ids[chosen]).sum().item() / n
    other = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.015 and abs(other - 0.1) < 0.015, (masked, kept, other)


def test_image_masking_ratio_and_squares(tmp_path):
    objective, _, _ = _objective(tmp_path, image_mask_ratio=0.6)
    torch.manual_seed(0)
    mask = objective.image_mask(64)
    assert mask.shape == (64, 4, 4)  # 32 px in 8 px squares
    assert mask.flatten(1).sum(1).tolist() == [round(0.6 * 16)] * 64
    # every square is masked somewhere: the choice is uniform
    assert mask.float().mean(0).min() > 0.2


def test_no_cross_modal_path(tmp_path):
    """The image loss reads only the image and the text loss only the text: changing one modality leaves
    the other's loss bit for bit, and each loss sends gradient only into its own tower."""
    objective, tok, batch = _objective(tmp_path)
    objective.eval()

    def logs(b):
        torch.manual_seed(3)
        return objective(b)[1]

    ref = logs(batch)
    other_ids, other_pad = tok.encode(TEXTS[5:9], 12)
    new_text = logs({**batch, "text_ids": other_ids, "text_pad_mask": other_pad})
    new_image = logs({**batch, "image": torch.randn_like(batch["image"])})
    assert new_text["loss_mim"] == ref["loss_mim"] and new_text["loss_mlm"] != ref["loss_mlm"]
    assert new_image["loss_mlm"] == ref["loss_mlm"] and new_image["loss_mim"] != ref["loss_mim"]
    torch.manual_seed(3)
    mask = objective.image_mask(4)
    image_loss = objective.image_loss(batch["image"], mask)
    text_loss, _ = objective.text_loss(batch["text_ids"], batch["text_pad_mask"])
    enc = objective.encoder
    for loss, own, other in ((image_loss, enc.swin, enc.text_encoder), (text_loss, enc.text_encoder, enc.swin)):
        grads = torch.autograd.grad(loss, list(own.parameters()) + list(other.parameters()), allow_unused=True)
        mine, theirs = grads[: len(list(own.parameters()))], grads[len(list(own.parameters())) :]
        assert any(g is not None and g.abs().sum() > 0 for g in mine)
        assert all(g is None for g in theirs)


def test_export_is_each_towers_official_layout_and_loads_exactly(tmp_path, caplog):
    from safetensors.torch import load_file

    from risbench.models.encoders.swin_bert import SwinBertConfig, SwinBertEncoder

    objective, _, batch = _objective(tmp_path)
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-2)
    loss, _ = objective(batch)
    loss.backward()
    opt.step()  # away from init, so that a missed tensor would show
    _write(objective.export(), tmp_path / "art")
    options = objective.encoder_options(tmp_path / "art")
    assert set(options) == {"swin_weights", "bert_path"}
    swin = torch.load(options["swin_weights"], weights_only=True)["model"]
    assert "layers.0.blocks.0.attn.qkv.weight" in swin and "patch_embed.proj.weight" in swin
    assert {"mask_token", "decoder.0.weight", "norm1.weight"} <= set(swin)
    bert = load_file(str(Path(options["bert_path"]) / "model.safetensors"))
    assert {k.split(".")[0] for k in bert} == {"bert", "cls"}
    enc_options = {k: v for k, v in TINY_DUAL.items() if k != "name"}
    with caplog.at_level(logging.INFO):
        fresh = SwinBertEncoder(SwinBertConfig(**enc_options, **options))
    assert sorted(fresh.swin_report.ignored) == ["decoder.0.bias", "decoder.0.weight", "mask_token"]
    assert not fresh.swin_report.unplaced and not fresh.swin_report.left_at_init
    assert all(k.startswith("cls.predictions.") for k in fresh.bert_report["ignored"])
    a, b = objective.encoder.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_official_swin_layout_inverts_the_converter():
    from risbench.models.encoders.swin_bert import SwinBertConfig, SwinBertEncoder
    from risbench.models.encoders.swin_convert import convert_swin_state_dict, to_official_swin_state_dict

    enc_options = {k: v for k, v in TINY_DUAL.items() if k != "name"}
    encoder = SwinBertEncoder(SwinBertConfig(**enc_options))
    target = encoder.state_dict()
    official = to_official_swin_state_dict(target)
    assert not any(k.startswith(("swin.", "out_norms.", "text_encoder.")) for k in official)
    converted, report = convert_swin_state_dict(official, target, encoder.cfg.window_size)
    swin_keys = {k for k in target if k.startswith(("swin.", "out_norms."))}
    assert set(converted) == swin_keys and not report.unplaced
    assert all(torch.equal(converted[k], target[k]) for k in converted)


def test_pretrain_artifact_and_fine_tuning_from_it(tmp_path):
    from risbench.models.segmenter import build_model
    from risbench.train.pretrain import pretrain

    art = pretrain(tiny_pretrain(tmp_path), quiet=True)
    prov = art.provenance
    assert prov.objective == "dual_unimodal" and prov.steps == 3
    assert set(prov.final) == {"loss", "loss_mim", "loss_mlm", "acc_mlm"}
    assert set(prov.files) == {
        "swin.pth",
        "bert/config.json",
        "bert/model.safetensors",
        "tokenizer.json",
        "pretrain_log.jsonl",
        "config.yaml",
    }
    assert art.encoder_options == {
        "swin_weights": str(art.directory / "swin.pth"),
        "bert_path": str(art.directory / "bert"),
    }
    assert art.tokenizer_path == str(art.directory / "tokenizer.json")
    # the text tower never sees the image: its held-out terms are the same with swapped images
    held = prov.held_out
    assert held["image"]["loss_mlm"] == held["swapped_image"]["loss_mlm"]
    model = build_model("dual-ris-tiny", encoder={**TINY_DUAL, **art.encoder_options})
    enc = model.encoder
    assert enc.weights == f"swin={art.encoder_options['swin_weights']},bert={art.encoder_options['bert_path']}"
    rebuilt = torch.load(art.encoder_options["swin_weights"], weights_only=True)["model"]
    assert torch.equal(enc.swin.embeddings.patch_embeddings.projection.weight, rebuilt["patch_embed.proj.weight"])


def _write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"model": "shared-ris-tiny"}, "objective 'dual_unimodal' needs multi_scale"),
        ({"objective": {"name": "dual_unimodal", "image_mask_ratio": 1.0}}, "image_mask_ratio must be in (0, 1)"),
        ({"objective": {"name": "dual_unimodal", "image_loss": "l2"}}, "image_loss must be one of l1, mse"),
        ({"objective": {"name": "dual_unimodal", "mask_patch_size": 5}}, "mask_patch_size 5 must be a multiple"),
        (
            {"model": {"preset": "dual-ris-tiny", "encoder": {**TINY_DUAL, "swin_heads": [1, 2]}}},
            "need one entry (>= 1) per stage",
        ),
        (
            {"model": {"preset": "dual-ris-tiny", "encoder": {**TINY_DUAL, "bert_heads": 3}}},
            "heads dividing hidden",
        ),
    ],
)
def test_bad_dual_pretrain_config_is_one_line_exit_2(tmp_path, capsys, change, expected):
    cfg = {**tiny_pretrain(tmp_path), **change}
    path = _write_yaml(tmp_path / "bad.yaml", cfg)
    out = tmp_path / "out"
    assert main(["pretrain", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_the_family_objective_is_the_default():
    from risbench.train.pretrain_config import resolve_pretrain_config

    cfg, _ = resolve_pretrain_config({"model": "dual-ris-tiny", "objective": None})
    assert cfg.objective.name == "dual_unimodal"


def test_registry_config_matches_the_single_encoders():
    """swin-bert-tiny-synthref pretrains on beit3-tiny-synthref's data, steps, batch and recipe."""
    from risbench.train.pretrain_config import load_pretrain_config, resolve_pretrain_config

    _, dual = resolve_pretrain_config(load_pretrain_config("swin-bert-tiny-synthref"))
    _, single = resolve_pretrain_config(load_pretrain_config("beit3-tiny-synthref"))
    assert dual["objective"]["name"] == "dual_unimodal" and dual["model"]["encoder"]["name"] == "swin_bert"
    assert dual["data"] == single["data"] and dual["train"] == single["train"]
    assert dual["tokenizer"] == single["tokenizer"] and dual["seed"] == single["seed"]
