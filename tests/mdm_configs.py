"""The raw config of a tiny `beit3_mdm` pretraining run, shared by the tests of its optional terms."""

from __future__ import annotations

from pathlib import Path


def tiny_mdm_raw(tmp_path: Path, name: str, objective: dict, data: dict | None = None, max_len: int = 24) -> dict:
    """A 2-layer, width-32 BEiT-3 on 8 SynthRef scenes (scene captions unless `data` says otherwise), 3 steps."""
    encoder = {"image_size": 32, "embed_dim": 32, "num_heads": 2, "depth": 2, "out_indices": [1, 2]}
    base = {"name": "synthref", "num_train": 8, "num_val": 2, "num_test": 2, "image_size": 40, "seed": 1000}
    return {
        "name": name,
        "model": {"preset": "shared-ris-tiny", "encoder": encoder},
        "data": {**base, "text": "captions", **(data or {})},
        "objective": {"name": "beit3_mdm", **objective},
        "tokenizer": {"max_len": max_len, "vocab_size": 200, "cache_dir": str(tmp_path / "tok")},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 2e-3, "warmup_steps": 1, "log_every": 1, "threads": 1},
    }


def check_exported_head(artifact, head: str, width: int) -> None:
    """The artifact's export holds `head` as a (vocab, width) linear layer, and loading the artifact restores it."""
    import torch

    from risbench.train.probe import objective_from_artifact

    sd = torch.load(artifact.encoder_options["weights"], weights_only=True)["model"]
    assert sd[f"{head}.weight"].shape == (sd["mlm_head.weight"].shape[0], width)
    objective = objective_from_artifact(artifact.directory)[0]
    assert torch.equal(getattr(objective, head).weight, sd[f"{head}.weight"])
