"""`train.lr_mult`: per-module multipliers of the schedule's lr (CRIS's backbone lr_multi, CGFormer's 5e-5 / 1e-4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from risbench.train.config import TrainConfig, comparable
from risbench.train.optim import LRSchedule, build_optimizer, lr_mult_of


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.encoder_head = nn.Linear(4, 4)  # shares a string prefix with "encoder", not a module prefix
        self.decoder = nn.Linear(4, 1)


def lrs_by_param(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    ids = {id(p): n for n, p in net.named_parameters()}
    return {ids[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_lr_mult_scales_only_the_named_module_and_keeps_decay_split() -> None:
    net = Net()
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, schedule="constant", lr_mult={"encoder": 0.1, "encoder.1": 0.5})
    opt = build_optimizer(net, cfg)
    LRSchedule(cfg, total_steps=10).apply(opt, 0)
    lrs = lrs_by_param(net, opt)
    assert lrs["encoder.0.weight"] == pytest.approx(1e-4)
    assert lrs["encoder.0.bias"] == pytest.approx(1e-4)
    assert lrs["encoder.1.weight"] == pytest.approx(5e-4)  # the longest prefix wins
    assert lrs["encoder_head.weight"] == pytest.approx(1e-3)
    assert lrs["decoder.weight"] == pytest.approx(1e-3)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(net.encoder[0].weight)] == cfg.weight_decay and decay[id(net.encoder[0].bias)] == 0.0


def test_lr_mult_zero_freezes_in_effect_and_ddp_prefix_is_ignored() -> None:
    assert lr_mult_of("module.encoder.0.weight", {"encoder": 0.0}) == 0.0
    net = Net()
    cfg = TrainConfig(lr=1e-2, warmup_steps=0, schedule="constant", lr_mult={"encoder": 0.0}, weight_decay=0.0)
    opt = build_optimizer(net, cfg)
    LRSchedule(cfg, total_steps=10).apply(opt, 0)
    before = net.encoder[0].weight.detach().clone()
    loss = net.decoder(net.encoder_head(net.encoder(torch.randn(2, 4)))).sum()
    loss.backward()
    opt.step()
    assert torch.equal(net.encoder[0].weight, before)
    assert not torch.equal(net.decoder.weight.grad, torch.zeros_like(net.decoder.weight))


def test_without_lr_mult_groups_and_run_identity_are_unchanged() -> None:
    net = Net()
    opt = build_optimizer(net, TrainConfig())
    assert len(opt.param_groups) == 2 and [g["weight_decay"] > 0 for g in opt.param_groups] == [True, False]
    base = {"train": {"lr": 1e-3}}
    assert comparable(base) == comparable({"train": {"lr": 1e-3, "lr_mult": {}}})
    assert comparable(base) != comparable({"train": {"lr": 1e-3, "lr_mult": {"encoder": 0.1}}})


def test_bad_lr_mult_is_refused() -> None:
    with pytest.raises(ValueError, match="lr_mult"):
        TrainConfig(lr_mult={"encoder": -1})
