"""The side-by-side baseline of `risbench bench`: the same model's step as a plain PyTorch loop.

Written without the harness's step (`optimization_step`): the batch is put on the device once and the
target resized once, then each step is forward under the same autocast, the same loss and the decoder's
auxiliary terms, backward, clipping and a fresh optimizer of the same kind. The difference between the
harness's median step and this one's is the harness's own cost (the copy of each batch, the phase marks,
the finite check where it runs, the terms dictionary).
"""

from __future__ import annotations

from typing import Any

import torch

from risbench.step_timing import PhaseClock, summarize, time_phased
from risbench.train.config import TrainConfig
from risbench.train.losses import build_loss
from risbench.train.optim import build_optimizer
from risbench.train.precision import autocast_context


def plain_loop(net, step_model, recipe: TrainConfig, batch: dict[str, Any], dev, mode: str, steps: int, warmup: int):
    """Median seconds of the same model's step written as a plain PyTorch loop, outside the harness: the
    batch already on the device and the target already at the logits' size, then forward, the same loss
    and auxiliary terms, backward, clipping and a fresh optimizer of the same kind (no marks, no checks)."""
    image, ids, pad = (batch[k].to(dev) for k in ("image", "text_ids", "text_pad_mask"))
    loss_fn = build_loss(recipe.loss.name, recipe.loss.options)
    with torch.no_grad(), autocast_context(dev, recipe.amp):  # the bare model: no DDP step, no new compile
        shape = tuple(net(image, ids, pad).logits.shape[-2:])
    target = torch.nn.functional.interpolate(batch["mask"].to(dev)[:, None].float(), size=shape, mode="nearest")
    optimizer = build_optimizer(net, recipe, dev)

    def train(clock: PhaseClock) -> None:
        clock.start()
        with autocast_context(dev, recipe.amp):
            out = step_model(image, ids, pad)
        logits = out.logits.float()
        loss = sum(loss_fn(logits, target, batch).values()) + sum(net.decoder.extra_losses(out, target, batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.clip_grad)
        optimizer.step()

    @torch.no_grad()
    def infer(clock: PhaseClock) -> None:
        clock.start()
        with autocast_context(dev, recipe.amp):
            step_model(image, ids, pad)

    return summarize(time_phased(train if mode == "train" else infer, dev, steps, warmup))["s_per_step_median"]
