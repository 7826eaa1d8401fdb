"""How fast does an encoder learn to tell SynthRef's six shapes apart, given the most direct signal there is?

A diagnostic for docs/decisions.md §9, not part of the harness. It trains the encoder end to end with a
linear head on 6-way shape classification of 1-object SynthRef scenes (the pretraining data of an artifact,
seed 1000), every word of the caption replaced by the mask token so that the shape can only come from the
pixels, and prints the test accuracy on 200 held-out scenes every 50 steps. The encoder starts from random
init (`--init random`) or from the artifact (`--init artifact`); the head reads the mean of the last patch
map (`image`) or its maximum over positions (`image_max`), the image CLS token (`cls`) or the first text
token (`text`) of the final joint sequence.

`--save DIR` writes the trained encoder as an artifact-like folder (`encoder.pth` in BEiT-3's layout and the
artifact's `tokenizer.model`), so that `encoder.weights=DIR/encoder.pth tokenizer.path=DIR/tokenizer.model`
fine-tunes from it: an oracle encoder that was told the shapes, to ask whether fine-tuning uses shape once
the encoder has it. bf16 autocast only where the CPU has native bf16 (`--amp`, as `train.amp`).

    python scripts/shape_probe.py pretrained/beit3-conv-tiny-synthref-8a03882dd2bb --init artifact --steps 500
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from risbench.data.collate import Collator
from risbench.data.synthref_scene import SHAPES
from risbench.train.precision import autocast_context, precision_name
from risbench.train.pretrain import _split
from risbench.train.probe import objective_from_artifact

TEST_START, TEST_BATCHES, BATCH, TEST_BATCH = 15000, 4, 32, 50


def one_object_batches(objective, tokenizer, cfg, resolved):
    """batch(start, n) -> (collated batch, shape labels) of 1-object scenes of the artifact's pretraining data
    (train split), one object named in full; also used by cnn_shape_probe.py."""
    data = {**resolved["data"], "text": "objects", "min_objects": 1, "max_objects": 1, "refs_per_scene": 1}
    dataset = _split({**resolved, "data": data}, objective.encoder, "train", cfg.seed)
    collate = Collator(tokenizer, cfg.tokenizer.max_len)

    def batch(start: int, n: int) -> tuple[dict, torch.Tensor]:
        items = [dataset[i] for i in range(start, start + n)]
        labels = [next(SHAPES.index(w) for w in it["text"].split() if w in SHAPES) for it in items]
        return collate(items), torch.tensor(labels)

    return batch


def main() -> None:
    """Parse the options, train, print the learning curve."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path, help="a finished `risbench pretrain` folder (its config and data)")
    ap.add_argument("--init", choices=("random", "artifact"), default="random")
    ap.add_argument("--readout", choices=("image", "image_max", "cls", "text"), default="image")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--encoder-init", default=None, help="encoder.init for random init, e.g. scratch_sincos")
    ap.add_argument("--amp", default="bf16_if_native", choices=("off", "bf16", "bf16_if_native"))
    ap.add_argument("--save", type=Path, default=None, help="write the trained encoder and tokenizer here")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    encoder_options = {"init": args.encoder_init} if args.encoder_init else None
    objective, tokenizer, cfg, resolved = objective_from_artifact(
        args.artifact, weights=args.init == "artifact", encoder=encoder_options
    )
    encoder = objective.encoder
    batch = one_object_batches(objective, tokenizer, cfg, resolved)
    mask_id = int(tokenizer.mask_id)

    def features(b) -> torch.Tensor:
        ids = b["text_ids"].masked_fill(~b["text_pad_mask"], mask_id)  # no word of the caption is seen
        if args.readout in ("image", "image_max"):
            last = encoder(b["image"], ids, b["text_pad_mask"]).visual[-1]
            return last.mean((2, 3)) if args.readout == "image" else last.amax((2, 3))
        seq = encoder.final_sequence(b["image"], ids, b["text_pad_mask"], None)
        return seq[:, 0] if args.readout == "cls" else seq[:, encoder.num_vision_tokens]

    head = torch.nn.Linear(encoder.embed_dim, len(SHAPES))
    params = list(head.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    test = [batch(TEST_START + TEST_BATCH * k, TEST_BATCH) for k in range(TEST_BATCHES)]
    print(f"precision: {precision_name(torch.device('cpu'), args.amp)}", flush=True)
    started = time.time()
    for step in range(1, args.steps + 1):
        b, y = batch(BATCH * (step - 1), BATCH)
        with autocast_context(torch.device("cpu"), args.amp):
            loss = F.cross_entropy(head(features(b)).float(), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                hits = sum(int((head(features(tb)).argmax(1) == ty).sum()) for tb, ty in test)
            acc = 100.0 * hits / (TEST_BATCH * TEST_BATCHES)
            print(
                f"{args.init} {args.readout} step {step} loss {float(loss.detach()):.3f} test acc {acc:.1f} "
                f"({time.time() - started:.0f} s)",
                flush=True,
            )
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        for name, payload in objective.export().items():
            torch.save(payload, args.save / name)
        shutil.copy(args.artifact / "tokenizer.model", args.save / "tokenizer.model")
        print(f"wrote {args.save}", flush=True)


if __name__ == "__main__":
    main()
