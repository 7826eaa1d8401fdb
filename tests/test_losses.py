"""bce_dice on a hand case, and the LOSSES registry."""

from __future__ import annotations

import math

import pytest
import torch

from risbench.errors import RisbenchError
from risbench.registry import LOSSES
from risbench.train.losses import build_loss, dice_loss, resize_target


def test_bce_dice_hand_case():
    # logits 0 -> p = 0.5 everywhere; target: 1 of 4 pixels
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    terms = build_loss("bce_dice")(logits, target, {})
    assert terms["bce"].item() == pytest.approx(2.0 * math.log(2))
    # dice = 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5
    assert terms["dice"].item() == pytest.approx(0.5 * 0.5)


def test_dice_is_per_sample_mean_and_negative_pushes_to_zero():
    p = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # sample 1: perfect -> 0; sample 2 (negative): 1 - 1 / (2 + 1) = 2/3
    assert dice_loss(p, t).item() == pytest.approx((0 + 2 / 3) / 2)


def test_bce_dice_weights_and_unknown_option():
    logits = torch.randn(2, 1, 4, 4)
    target = (torch.rand(2, 1, 4, 4) > 0.5).float()
    a = build_loss("bce_dice", {"bce_weight": 1.0, "dice_weight": 1.0})(logits, target)
    b = build_loss("bce_dice")(logits, target)
    assert b["bce"].item() == pytest.approx(2 * a["bce"].item())
    assert b["dice"].item() == pytest.approx(0.5 * a["dice"].item())
    with pytest.raises(RisbenchError):
        build_loss("bce_dice", {"bce_wieght": 1.0})
    assert "bce_dice" in LOSSES.names()


def test_resize_target_nearest():
    m = torch.zeros(1, 8, 8)
    m[0, :4, :4] = 1
    r = resize_target(m, (4, 4))
    assert r.shape == (1, 1, 4, 4)
    assert r[0, 0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_gradient_flows():
    logits = torch.zeros(1, 1, 3, 3, requires_grad=True)
    terms = build_loss("bce_dice")(logits, torch.ones(1, 1, 3, 3))
    sum(terms.values()).backward()
    assert (logits.grad < 0).all()
