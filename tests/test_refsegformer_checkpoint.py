"""A whole released RefSegformer checkpoint (`ckpt.pth` = {'model': RefSegFormer.state_dict()}) loads strictly, key by
key, into our presets: BERT, Swin, the VLTFs, the decoder and the existence head. The official keys and shapes were
dumped from the official code (jianzongwu/robust-ref-seg@e7c7da6f, random weights, scratch;
tests/data/refsegformer_official_keys.json): the README build at full size, and the cross-attention build at a
reduced size whose tensors are small enough to fill with values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from risbench.errors import RisbenchError
from risbench.models.refsegformer_checkpoint import convert_refsegformer, load_refsegformer_checkpoint
from risbench.models.segmenter import build_model
from risbench.models.strict_load import load_strict
from risbench.train.weights import checkpoint_layout, load_model_weights

OFFICIAL = json.loads((Path(__file__).parent / "data" / "refsegformer_official_keys.json").read_text())
BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index")
# what our model leaves out of the official state dict on purpose (refsegformer_checkpoint.UNUSED_VISION)
DROPPED = ("image_encoder.layers.0.memory.weight", "image_encoder.norm.weight", "image_encoder.norm.bias")
# the reduced official build of tests/data ("xattn_small") as our spec
SMALL = {
    "encoder": {
        "name": "swin_bert",
        "size": "tiny-test",
        "image_size": 64,
        "patch_size": 4,
        "window_size": 4,
        "swin_embed_dim": 32,
        "swin_depths": [2, 2, 2, 2],
        "swin_heads": [1, 2, 4, 8],
        "bert_hidden": 768,
        "bert_layers": 1,
        "bert_heads": 12,
        "bert_ffn": 256,
        "vocab_size": 1000,
        "max_text_len": 20,
        "out_indices": [1, 2, 3, 4],
        "out_norm": False,
        "freeze": [],
        "stage_fusion": {"name": "vltf"},
    },
    "fpn": {"name": "passthrough", "project": False},
    "decoder": {"name": "refsegformer_xattn", "num_heads": [1, 2, 4, 8]},
    "existence": {"name": "refsegformer"},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_full_released_checkpoint_loads_strictly_into_the_preset() -> None:
    """The README build (--use_mask --use_exist --use_pixel_decoder) at full size, on the meta device: every key and
    shape of the `refsegformer` preset filled, every official tensor used but the three dropped ones."""
    shapes = OFFICIAL["pixel"]
    with torch.device("meta"):
        model = build_model("refsegformer")
        sd = {k: torch.empty(s) for k, s in shapes.items()}
    load_strict(model, convert_refsegformer(sd, model), "the official keys")
    official = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(BUFFERS))
    assert sum(p.numel() for p in model.parameters()) == official - sum(math.prod(shapes[k]) for k in DROPPED)


def _small_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {
        k: (torch.rand(s, generator=g) + 0.5 if k.endswith("running_var") else torch.randn(s, generator=g))
        if s
        else torch.tensor(7)
        for k, s in OFFICIAL["xattn_small"].items()
        if not k.endswith("relative_position_index")
    }
    torch.save({"model": sd, "optimizer": {}, "lr_scheduler": {}, "epoch": 3}, path)
    return sd


def test_small_released_checkpoint_puts_every_tensor_in_its_place(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    sd = _small_checkpoint(path)
    model = build_model(SMALL)
    assert checkpoint_layout(torch.load(path, weights_only=True)) == "refsegformer"
    assert load_model_weights(model, path) == "refsegformer"
    ours = model.state_dict()
    c = 64  # Swin stage 2 (layers.1): q, k, v are the rows of the fused qkv, in that order
    qkv = sd["image_encoder.layers.1.blocks.0.attn.qkv.weight"]
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        torch.testing.assert_close(
            ours[f"encoder.swin.encoder.layers.1.blocks.0.attention.{name}.weight"], qkv[i * c : (i + 1) * c]
        )
    pairs = {  # ours (encoder. / decoder. / existence.) -> official
        "encoder.swin.embeddings.patch_embeddings.projection.weight": "image_encoder.patch_embed.proj.weight",
        "encoder.swin.encoder.layers.2.downsample.reduction.weight": "image_encoder.layers.2.downsample.reduction."
        "weight",
        "encoder.stage_fusion.fusions.2.memory_token.weight": "image_encoder.layers.1.VLTF.memory_token.weight",
        "encoder.stage_fusion.fusions.4.feature_fuse.fc_o.bias": "image_encoder.layers.3.VLTF.feature_fuse.fc_o.bias",
        "encoder.stage_fusion.fusions.3.output_proj.1.running_var": "image_encoder.layers.2.VLTF.output_proj.1."
        "running_var",
        "encoder.text_encoder.encoder.layer.0.attention.self.query.weight": "text_encoder.encoder.layer.0.attention."
        "self.query.weight",
        "encoder.text_encoder.embeddings.word_embeddings.weight": "text_encoder.embeddings.word_embeddings.weight",
        "decoder.cross_attns.0.k_proj.weight": "segmentation.cross_attns.0.fc_k.weight",
        "existence.src_cross_attn.out_proj.weight": "segmentation.src_cross_attn.fc_o.weight",
        "existence.src_cross_attn.q_proj.bias": "segmentation.src_cross_attn.fc_q.bias",
        "existence.exist_pred.weight": "segmentation.exist_pred.weight",
    }
    for mine, theirs in pairs.items():
        torch.testing.assert_close(ours[mine], sd[theirs])
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), torch.randint(4, 900, (1, 8)), torch.zeros(1, 8, dtype=torch.bool))
    assert out.exist_logits.shape == (1,) and torch.isfinite(out.logits).all()


def test_checkpoint_and_model_that_do_not_fit_fail_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    sd = _small_checkpoint(path)
    with pytest.raises(RisbenchError, match="holds an existence head.*add `existence: {name: refsegformer}`"):
        load_refsegformer_checkpoint(build_model({k: v for k, v in SMALL.items() if k != "existence"}), path)
    other = torch.nn.Module()
    other.encoder, other.existence = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with pytest.raises(RisbenchError, match="encoder is not swin_bert"):
        load_refsegformer_checkpoint(other, path)
    del sd["segmentation.exist_pred.bias"]
    torch.save({"model": sd}, path)
    with pytest.raises(RisbenchError, match=r"1 missing \(e\.g\. \['existence\.exist_pred\.bias'\]\)") as exc:
        load_refsegformer_checkpoint(build_model(SMALL), path)
    assert "\n" not in str(exc.value)


def _run_config(tmp_path: Path) -> Path:
    cfg = {
        "model": SMALL,
        "data": {"name": "synthref", "num_train": 2, "num_val": 1, "num_test": 1, "image_size": 64},
        "tokenizer": {"max_len": 20, "cache_dir": str(tmp_path / "tok")},
        "train": {"threads": 1},
        "eval": {"splits": ["val"], "batch_size": 8},
        "run_dir": str(tmp_path / "released"),
    }
    path = tmp_path / "refsegformer_small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_eval_a_released_checkpoint_through_the_cli(tmp_path: Path, capsys) -> None:
    """`risbench eval CONFIG --checkpoint ckpt.pth` evaluates a released file; a wrong key, a wrong shape or a
    corrupt file is one line and exit 2."""
    from risbench.cli.main import main

    config = _run_config(tmp_path)
    good = tmp_path / "ckpt.pth"
    sd = _small_checkpoint(good)
    assert main(["eval", str(config), "--checkpoint", str(good)]) == 0
    written = json.loads(next((tmp_path / "released" / "evals").glob("val*.json")).read_text())
    assert written["checkpoint"] == str(good) and written["splits"]["val"]["num_sentences"] > 0
    capsys.readouterr()

    wrong_key = dict(sd)
    wrong_key["image_encoder.layers.1.VLTF.extra.weight"] = torch.zeros(2)
    torch.save({"model": wrong_key}, tmp_path / "wrong_key.pth")
    wrong_shape = dict(sd)
    wrong_shape["segmentation.exist_pred.weight"] = torch.zeros(1, 65)
    torch.save({"model": wrong_shape}, tmp_path / "wrong_shape.pth")
    (tmp_path / "corrupt.pth").write_bytes(good.read_bytes()[:1000])
    cases = [
        ("wrong_key.pth", "1 unexpected (e.g. ['encoder.stage_fusion.fusions.2.extra.weight'])"),
        ("wrong_shape.pth", "1 shape mismatches (e.g. ['existence.exist_pred.weight (1, 65) vs ours (1, 64)'])"),
        ("corrupt.pth", "corrupt.pth: not a readable checkpoint"),
    ]
    for name, message in cases:
        assert main(["eval", str(config), "--checkpoint", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, (name, err)
