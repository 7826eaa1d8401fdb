"""RISAM's parts against their equations (seed003 Eqs. 3-5, 10-12), the SAM pad resize, the tiny preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from risbench.data.transforms import ResizeNormalize, input_resolution_mask, unmap_prediction
from risbench.models.mutual_attention import MutualAwareBlock, relevance_keep
from risbench.models.segmenter import build_model
from risbench.train.losses import build_loss

B, LV, LL, CV, CL, D = 2, 12, 5, 8, 6, 8


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    v, words = torch.randn(B, LV, CV, generator=g), torch.randn(B, LL, CL, generator=g)
    pad = torch.zeros(B, LL, dtype=torch.bool)
    pad[1, -2:] = True
    return v, words, pad


def test_mutual_aware_block_is_eqs_3_to_5_with_the_relevance_mask() -> None:
    torch.manual_seed(0)
    block = MutualAwareBlock(CV, CL, D, tau=0.35)
    v, words, pad = _inputs()
    f_lav, f_val = block(v, words, pad)
    zv, zl = v @ block.w_v.weight.T, words @ block.w_l.weight.T
    s = zv @ zl.transpose(1, 2) / D**0.5
    keep = (torch.sigmoid(s) >= 0.35) & ~pad[:, None, :]
    keep = keep | (~keep.any(-1, keepdim=True) & ~pad[:, None, :])
    a = torch.where(keep, s, torch.tensor(float("-inf"))).softmax(-1)
    ln = lambda x, n: F.layer_norm(x, (D,), n.weight, n.bias)  # noqa: E731
    torch.testing.assert_close(f_lav, ln(a @ zl + zv, block.norm_v))
    torch.testing.assert_close(f_val, ln(a.transpose(1, 2) @ zv + zl, block.norm_l))
    assert (a[1, :, -2:] == 0).all()  # text padding never attended


def test_mask_readings_and_their_direction_in_tau() -> None:
    s = torch.linspace(-3, 3, 61)[None, None, :]
    rel, lit = relevance_keep(s, 0.35, "relevance"), relevance_keep(s, 0.35, "literal")
    assert torch.equal(rel, torch.sigmoid(s) >= 0.35)
    assert torch.equal(lit, torch.sigmoid(s) > 0.65)  # literal: 1/(1+e^S) < tau
    # a larger tau masks more pairs under the relevance reading and fewer under the literal one (Fig. 8's text)
    assert relevance_keep(s, 0.5, "relevance").sum() < rel.sum()
    assert relevance_keep(s, 0.5, "literal").sum() > lit.sum()


def test_a_fully_masked_row_is_unmasked_and_no_nan() -> None:
    torch.manual_seed(0)
    v, words, pad = _inputs()
    masked = MutualAwareBlock(CV, CL, D, tau=1.0)  # sigmoid(S) >= 1 never holds: every pixel row is empty
    plain = MutualAwareBlock(CV, CL, D, mask=False)
    plain.load_state_dict(masked.state_dict())
    out, ref = masked(v, words, pad), plain(v, words, pad)
    assert all(torch.isfinite(o).all() for o in out)
    torch.testing.assert_close(out[0], ref[0])


def test_softmax_over_pixels_switch() -> None:
    torch.manual_seed(0)
    block = MutualAwareBlock(CV, CL, D, mask=False, text_attention="softmax_pixels")
    v, words, pad = _inputs()
    _, f_val = block(v, words, pad)
    zv, zl = block.w_v(v), block.w_l(words)
    a_t = (zl @ zv.transpose(1, 2) / D**0.5).softmax(-1)  # each word: weights over pixels sum to 1
    torch.testing.assert_close(f_val, F.layer_norm(a_t @ zv + zl, (D,), block.norm_l.weight, block.norm_l.bias))


def test_focal_dice_is_half_focal_half_dice() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8, generator=g), (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    terms = build_loss("focal_dice")(logits, target)
    p = torch.sigmoid(logits)
    p_t = torch.where(target > 0, p, 1 - p)
    focal = (-((1 - p_t) ** 2) * torch.log(p_t)).mean()
    inter = (p * target).flatten(1).sum(1)
    dice = (1 - (2 * inter + 1) / (p.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)).mean()
    torch.testing.assert_close(terms["focal"], 0.5 * focal)
    torch.testing.assert_close(terms["dice"], 0.5 * dice)


def test_sam_pad_resize_keeps_the_aspect_and_maps_back() -> None:
    image = np.full((60, 120, 3), 200, dtype=np.uint8)
    mask = np.zeros((60, 120), dtype=np.uint8)
    mask[:, :30] = 1
    t = ResizeNormalize(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize="pad")
    img, target, resize = t(image, mask)
    assert resize["box"] == (0, 0, 32, 64) and img.shape == (3, 64, 64)
    assert torch.allclose(img[:, 32:], torch.zeros(())) and torch.allclose(img[:, :32], torch.tensor(200 / 255 * 4 - 2))
    assert target[:32, :16].all() and not target[:32, 16:].any() and not target[32:].any()
    meta = {"orig_size": (60, 120), "resize": resize, "orig_mask": mask}
    back = unmap_prediction(target[::4, ::4].clone(), meta)  # a 1/4-resolution prediction
    assert back.shape == (60, 120) and ((back > 0.5).numpy() == mask.astype(bool)).mean() > 0.97
    assert (input_resolution_mask(meta, 64) == target.numpy()).all()


@pytest.mark.parametrize("fusion", ["mutual", "concat_conv"])
def test_tiny_risam_trains_only_fpn_and_decoder(fusion: str) -> None:
    torch.manual_seed(0)
    model = build_model("risam-sam-tiny", [f"fpn.fusion={fusion}", "encoder.vision.image_size=64"])
    assert model.encoder.input_resize == "pad"
    assert not any(p.requires_grad for p in model.encoder.parameters())
    ids = torch.randint(1, 90, (2, 7))
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    out = model(torch.randn(2, 3, 64, 64), ids, pad)
    assert out.logits.shape == (2, 1, 16, 16)  # 4 x the 4 x 4 patch grid


def test_risam_recipe_is_the_paper_s_x01_after_epochs_30_and_42() -> None:
    import yaml

    from risbench.config import PROJECT_ROOT
    from risbench.train.config import TrainConfig
    from risbench.train.optim import LRSchedule

    recipe = yaml.safe_load((PROJECT_ROOT / "registry/recipes/risam-paper.yaml").read_text())["train"]
    keys = ("lr", "schedule", "milestones", "gamma")
    t = TrainConfig(**{k: recipe[k] for k in keys})
    s = LRSchedule(t, total_steps=50 * 3, steps_per_epoch=3)
    lrs = [s.lr_at(3 * e + 2) for e in range(50)]  # the last step of each epoch
    assert lrs[29] == 1e-4 and lrs[30] == pytest.approx(1e-5) and lrs[41] == pytest.approx(1e-5)
    assert lrs[42] == pytest.approx(1e-6) and lrs[49] == pytest.approx(1e-6)


def test_risam_paper_experiments_find_their_paper_rows() -> None:
    from risbench.config import PROJECT_ROOT
    from risbench.runner.experiment import load_experiment
    from risbench.runner.tables import load_paper_table

    paths = sorted(PROJECT_ROOT.glob("experiments/paper/risam_*.yaml"))
    assert len(paths) == 7
    for path in paths:
        exp = load_experiment(path)
        if not exp.table.mirrors:
            continue
        table = load_paper_table(exp.table.mirrors, exp.table.split)
        for variant in exp.variants:
            assert (exp.table.rows or {}).get(variant, variant) in table.index, (path.name, variant)


def test_risam_vit_h_counts_match_the_official_encoder_and_the_paper_s_6m() -> None:
    """Built on the meta device: the SAM ViT-H tower is segment-anything@dca509f's image encoder (637,026,048
    params, counted by running it) less its neck (918,528); ~6M trainable, ~1% of the model (seed003 Table 1)."""
    with torch.device("meta"):
        model = build_model("risam-vit-h")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.encoder.vision) == 637_026_048 - 918_528
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == count(model.fpn) + count(model.decoder) == 5_798_976
    assert 0.005 < trainable / count(model) < 0.01
