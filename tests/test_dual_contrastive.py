"""`dual_contrastive`: CLIP's contrastive pretraining of the dual encoder's towers: the loss against a hand
computation, the loss falls on an easy batch, the export in each tower's official layout loads strictly
(exact round trip), the artifact through `risbench pretrain` and the experiment options, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from risbench.cli.main import main

VISION = {"name": "dinov2_reg", "size": "tiny-test", "image_size": 56, "out_layers": [0, 1], "adapters": []}
TEXT = {"name": "clip_text", "size": "tiny-test", "vocab_size": 200, "context_length": 20, "adapters": []}
TEXTS = ["a small red circle", "a big blue star", "a green triangle", "a yellow square"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RISBENCH_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_pretrain(tmp_path: Path, **train) -> dict:
    """A pretraining of tiny-test DINOv2 / CLIP-text towers in detris-tiny's dual encoder, a few steps."""
    from test_pretrain import tiny_pretrain as tiny_beit3_pretrain

    cfg = tiny_beit3_pretrain(tmp_path, **{"max_steps": 3, **train})
    cfg["data"] = {**cfg["data"], "text": "captions"}
    return {
        **cfg,
        "name": "tiny-contrastive",
        "model": {
            "preset": "detris-tiny",
            "encoder": {"freeze": [], "train": [], "vision": VISION, "text": {**TEXT, "max_text_len": 10}},
        },
        "objective": {"name": "dual_contrastive"},
    }


def _encoder(**options):
    from risbench.models.encoders.dual import DualConfig, DualEncoder

    return DualEncoder(
        DualConfig(vision={**VISION, **options.get("vision", {})}, text={**TEXT, **options.get("text", {})})
    )


def _objective(tmp_path: Path):
    from risbench.data.tokenizers import build_tokenizer
    from risbench.models.encoders.dual_contrastive import DualContrastive, DualContrastiveConfig

    torch.manual_seed(0)
    tok = build_tokenizer("clip_bpe", None, TEXTS * 10, tmp_path / "tok", 200)
    objective = DualContrastive(DualContrastiveConfig(), _encoder(), tok)
    ids, pad = tok.encode(TEXTS, 8)
    batch = {"image": torch.randn(4, 3, 56, 56), "text_ids": ids, "text_pad_mask": pad}
    return objective, batch


def test_info_nce_matches_a_hand_computation():
    from risbench.models.encoders.pair_losses import symmetric_info_nce

    image = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    text = torch.tensor([[1.0, 1.0], [2.0, 0.0], [-1.0, 1.0]])
    scale = 10.0

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    im, tx = [unit(v.tolist()) for v in image], [unit(v.tolist()) for v in text]
    sim = [[scale * sum(a * b for a, b in zip(i, t, strict=True)) for t in tx] for i in im]
    rows = [-sim[i][i] + math.log(sum(math.exp(s) for s in sim[i])) for i in range(3)]
    cols = [-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(3))) for j in range(3)]
    expected = (sum(rows) / 3 + sum(cols) / 3) / 2
    loss, logits = symmetric_info_nce(image, text, torch.tensor(scale))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logits[0, 1].item() == pytest.approx(sim[0][1], rel=1e-5)


def test_temperature_starts_as_clips_and_the_loss_falls_on_an_easy_batch(tmp_path):
    objective, batch = _objective(tmp_path)
    assert objective.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    assert objective.visual_projection.shape == (32, 32)  # tiny-test DINOv2 width -> the text tower's sentence dim
    opt = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    first, logs = objective(batch)
    assert logs["acc_chance"] == 0.25
    for _ in range(25):
        loss, logs = objective(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last, logs = objective(batch)
    assert last.item() < 0.3 * first.item()
    assert logs["acc_i2t"] == logs["acc_t2i"] == 1.0


def test_the_vision_tower_never_reads_the_text(tmp_path):
    objective, batch = _objective(tmp_path)
    image = objective.encoder.vision.pooled(batch["image"])
    maps = objective.encoder.vision(batch["image"])  # fine-tuning's output, the same blocks
    assert image.shape == (4, 32) and maps[-1].shape == (4, 32, 4, 4)
    ln = objective.encoder.vision.tokens(batch["image"])[-1]
    assert torch.equal(ln[:, 0], image) and torch.equal(ln[:, 5:].transpose(1, 2).reshape(4, 32, 4, 4), maps[-1])


def test_export_is_each_towers_official_layout_and_loads_exactly(tmp_path):
    objective, batch = _objective(tmp_path)
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-2)
    loss, _ = objective(batch)
    loss.backward()
    opt.step()  # away from init, so that a missed tensor would show
    directory = tmp_path / "art"
    directory.mkdir()
    for name, payload in objective.export().items():
        torch.save(payload, directory / name)
    options = objective.encoder_options(directory)
    assert options == {
        "vision.weights": str(directory / "vision.pth"),
        "text.clip_state_dict": str(directory / "text.pth"),
    }
    vision = torch.load(directory / "vision.pth", weights_only=True)["model"]
    assert {"cls_token", "register_tokens", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.1.ls2.gamma"} <= set(
        vision
    )
    text = torch.load(directory / "text.pth", weights_only=True)
    assert {"text_projection", "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight"} <= set(text)
    heads = torch.load(directory / "contrastive_heads.pth", weights_only=True)
    assert set(heads) == {"visual_projection", "logit_scale"}
    fresh = _encoder(
        vision={"weights": options["vision.weights"]}, text={"clip_state_dict": options["text.clip_state_dict"]}
    )
    a, b = objective.encoder.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_pretrain_artifact_and_the_experiment_options(tmp_path):
    from risbench.runner.pretrained import with_encoder_options, without_encoder_options
    from risbench.train.pretrain import pretrain

    art = pretrain(tiny_pretrain(tmp_path), quiet=True)
    prov = art.provenance
    assert prov.objective == "dual_contrastive" and prov.steps == 3
    assert set(prov.final) == {"loss", "loss_clip", "acc_i2t", "acc_t2i", "acc_chance"}
    assert {"vision.pth", "text.pth", "contrastive_heads.pth", "pretrain_log.jsonl", "config.yaml"} <= set(prov.files)
    assert art.encoder_options == {
        "vision.weights": str(art.directory / "vision.pth"),
        "text.clip_state_dict": str(art.directory / "text.pth"),
    }
    held = prov.held_out
    assert held["image"]["acc_chance"] == 0.5  # 2 held-out pairs in one batch
    enc = {
        "name": "dual",
        "vision": {
            **VISION,
            "adapters": [{"name": "dense_aligner", "layers": [1], "dim": 16, "cross_dim": 16, "cross_heads": 2}],
        },
    }
    set_ = with_encoder_options(enc, art.encoder_options)
    assert set_["vision"]["weights"] == art.encoder_options["vision.weights"]
    assert set_["text"] == {"clip_state_dict": art.encoder_options["text.clip_state_dict"]}
    assert "weights" not in enc["vision"]  # the input is left as it was
    assert without_encoder_options(set_, art.encoder_options) == {**enc, "text": {}}
    # fine-tuning's towers (with adapters, frozen) load the artifact strictly
    from risbench.models.encoders.dual import DualConfig, DualEncoder

    tuned = DualEncoder(
        DualConfig(
            vision={**set_["vision"]},
            text={**TEXT, "max_text_len": 8, "clip_state_dict": art.encoder_options["text.clip_state_dict"]},
            freeze=("vision.*", "text.*"),
            train=("*.adapters.*",),
        )
    )
    official = torch.load(art.encoder_options["vision.weights"], weights_only=True)["model"]
    assert torch.equal(tuned.vision.model.embeddings.cls_token, official["cls_token"])
    assert tuned.weights.startswith("vision=") and "text.pth" in tuned.weights


def test_committed_artifact_loads_strictly_into_detris_tiny():
    from risbench.models.segmenter import build_model
    from risbench.runner.pretrained import with_encoder_options
    from risbench.spec import resolve_model_spec
    from risbench.train.pretrain import COMMITTED_DIR, read_artifact

    dirs = sorted(COMMITTED_DIR.glob("detris-tiny-synthref-*/pretrain.json"))
    if not dirs:
        pytest.skip("no committed detris-tiny-synthref artifact")
    art = read_artifact(dirs[-1].parent)
    spec = resolve_model_spec("detris-tiny")
    spec["encoder"] = with_encoder_options(spec["encoder"], art.encoder_options)
    model = build_model(spec)
    official = torch.load(art.encoder_options["vision.weights"], weights_only=True)["model"]
    assert torch.equal(
        model.encoder.vision.official_state_dict()["blocks.3.mlp.fc2.weight"], official["blocks.3.mlp.fc2.weight"]
    )
    text = torch.load(art.encoder_options["text.clip_state_dict"], weights_only=True)
    mine = model.encoder.text.official_state_dict()
    assert mine.keys() == text.keys() and all(torch.equal(mine[k], text[k]) for k in text)
    trainable = {n.split(".")[1] for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert trainable == {"adapters"}  # detris-tiny keeps the pretrained towers frozen


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "encoder, expected",
    [
        (
            {
                "vision": {
                    **VISION,
                    "adapters": [
                        {"name": "dense_aligner", "layers": [1], "dim": 16, "cross_dim": 16, "cross_heads": 2}
                    ],
                }
            },
            "set model.encoder.vision.adapters: []",
        ),
        ({"freeze": ["text.*"]}, "set model.encoder.freeze: []"),
        (
            {"vision": {"name": "sam_vit", "size": "tiny-test"}},
            "objective 'dual_contrastive' needs a vision tower with pooled",
        ),
    ],
)
def test_bad_contrastive_pretrain_config_is_one_line_exit_2(tmp_path, capsys, encoder, expected):
    cfg = tiny_pretrain(tmp_path)
    cfg["model"]["encoder"].update(encoder)
    path = _write_yaml(tmp_path / "bad.yaml", cfg)
    assert main(["pretrain", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out" / "pretrain.json").exists()


def test_another_encoder_is_incompatible(tmp_path, capsys):
    cfg = tiny_pretrain(tmp_path)
    cfg["model"] = "dual-ris-tiny"
    path = _write_yaml(tmp_path / "swin.yaml", cfg)
    assert main(["pretrain", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "objective 'dual_contrastive' needs sentence" in err and "encoder 'swin_bert'" in err
