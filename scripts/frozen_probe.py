"""Is an object's shape (or colour) linearly decodable from a frozen encoder's patch features?

A diagnostic for docs/decisions.md §9, not part of the harness. On scenes of 1-5 objects of an artifact's
pretraining data (train split, seed 1000), one object named in full per scene, every word of the caption is
replaced by the mask token (so that nothing comes from the words), and each visual level's features are
averaged over that object's mask. A multinomial logistic regression (L-BFGS, weight decay 1e-3) is fitted on
2000 objects and scored on the next 500; the accuracy of each level is printed (chance: 1/6). With `--run`,
the encoder is a fine-tuned run's (its checkpoints/last.pt), on the artifact's data: what fine-tuning kept.

    python scripts/frozen_probe.py pretrained/beit3-conv-tiny-synthref-8a03882dd2bb --init artifact
    python scripts/frozen_probe.py .cache/pretrain/beit3-conv-tiny-synthref-tags2-<hash> \
        --run runs/staged_pretraining/tags2-s0-<id>
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from risbench.data.collate import Collator
from risbench.data.synthref_scene import COLOURS, SHAPES
from risbench.train.checkpoint import load_checkpoint
from risbench.train.pretrain import _split
from risbench.train.probe import objective_from_artifact

TRAIN, TEST, BATCH = 2000, 500, 50
CLASSES = {"shape": list(SHAPES), "colour": list(COLOURS)}


def features(artifact: Path, weights: bool, run: Path | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(levels, objects, width) mask-averaged features and each object's class labels; `run`: the encoder of
    that fine-tuned run instead of the artifact's (the same architecture and tokenizer)."""
    objective, tokenizer, cfg, resolved = objective_from_artifact(artifact, weights=weights)
    if run is not None:
        state = load_checkpoint(run / "checkpoints" / "last.pt", map_location="cpu")["model"]
        objective.encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
    encoder = objective.encoder.eval()
    data = {**resolved["data"], "text": "objects", "min_objects": 1, "max_objects": 5, "refs_per_scene": 1}
    dataset = _split({**resolved, "data": data}, encoder, "train", cfg.seed)
    collate = Collator(tokenizer, cfg.tokenizer.max_len)
    feats, labels = [], {name: [] for name in CLASSES}
    with torch.no_grad():
        for start in range(0, TRAIN + TEST, BATCH):
            items = [dataset[i] for i in range(start, start + BATCH)]
            b = collate(items)
            ids = b["text_ids"].masked_fill(~b["text_pad_mask"], int(tokenizer.mask_id))
            mask = b["mask"].float()[:, None]
            levels = []
            for v in encoder(b["image"], ids, b["text_pad_mask"]).visual:
                m = F.interpolate(mask, size=v.shape[-2:], mode="area")
                levels.append((v * m).sum((2, 3)) / m.sum((2, 3)).clamp(min=1e-6))
            feats.append(torch.stack(levels))
            for it in items:
                words = it["text"].split()
                for name, known in CLASSES.items():
                    labels[name].append(next(known.index(w) for w in words if w in known))
    return torch.cat(feats, 1), {k: torch.tensor(v) for k, v in labels.items()}


def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
    """Held-out accuracy (%) of a logistic regression fitted on the first TRAIN rows."""
    x = (x - x[:TRAIN].mean(0)) / (x[:TRAIN].std(0) + 1e-6)
    head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x[:TRAIN]), y[:TRAIN]) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return 100.0 * float((head(x[TRAIN:]).argmax(1) == y[TRAIN:]).float().mean())


def main() -> None:
    """Parse the options, extract the features, print the accuracy of each level."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path, help="a finished `risbench pretrain` folder (its config and data)")
    ap.add_argument("--init", choices=("random", "artifact"), default="artifact")
    ap.add_argument("--run", type=Path, help="a fine-tuned run folder: probe its encoder (checkpoints/last.pt)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    started = time.time()
    feats, labels = features(args.artifact, args.init == "artifact", args.run)
    print(f"features {tuple(feats.shape)} (levels, objects, width) in {time.time() - started:.0f} s")
    for name, y in labels.items():
        accs = " ".join(f"{accuracy(feats[level], y):.1f}" for level in range(feats.shape[0]))
        print(f"{args.run or args.init} {name}: held-out accuracy by level {accs}")


if __name__ == "__main__":
    main()
