"""How fast does a plain small CNN learn SynthRef's six shapes, on the data `scripts/shape_probe.py` uses?

A diagnostic for docs/decisions.md §9, not part of the harness: a yardstick for the encoder's probe. Four
3x3 stride-2 convolutions (32, 64, 128, 128 channels, BatchNorm, ReLU; receptive field 31 px, stride 16), a
global mean or max pool (`--pool`), a linear 6-way head; AdamW lr 1e-3, batch 32, fp32, from random init, on
1-object scenes of the artifact's pretraining data (seed 1000, train split; the 200 test scenes start at
15000, as in shape_probe.py). Prints the test accuracy every 50 steps.

    python scripts/cnn_shape_probe.py pretrained/beit3-conv-tiny-synthref-8a03882dd2bb --pool max
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from shape_probe import TEST_BATCH, TEST_BATCHES, TEST_START, one_object_batches  # this folder's script
from torch import nn

from risbench.data.synthref_scene import SHAPES
from risbench.train.probe import objective_from_artifact

BATCH = 32


def cnn(pool: str) -> nn.Sequential:
    """The yardstick network."""
    layers, width = [], 3
    for out in (32, 64, 128, 128):
        layers += [nn.Conv2d(width, out, 3, 2, 1), nn.BatchNorm2d(out), nn.ReLU()]
        width = out
    pooling = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
    return nn.Sequential(*layers, pooling, nn.Flatten(), nn.Linear(width, len(SHAPES)))


def main() -> None:
    """Parse the options, train, print the learning curve."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path, help="a finished `risbench pretrain` folder (its data and tokenizer)")
    ap.add_argument("--pool", choices=("mean", "max"), default="max")
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    objective, tokenizer, cfg, resolved = objective_from_artifact(args.artifact, weights=False)
    scenes = one_object_batches(objective, tokenizer, cfg, resolved)

    def batch(start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        collated, labels = scenes(start, n)
        return collated["image"], labels

    net = cnn(args.pool)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    test = [batch(TEST_START + TEST_BATCH * k, TEST_BATCH) for k in range(TEST_BATCHES)]
    started = time.time()
    for step in range(1, args.steps + 1):
        x, y = batch(BATCH * (step - 1), BATCH)
        net.train()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            net.eval()
            with torch.no_grad():
                hits = sum(int((net(tx).argmax(1) == ty).sum()) for tx, ty in test)
            acc = 100.0 * hits / (TEST_BATCH * TEST_BATCHES)
            took, value = time.time() - started, float(loss.detach())
            print(f"{args.pool} pool step {step} loss {value:.3f} test acc {acc:.1f} ({took:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
