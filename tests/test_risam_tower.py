"""RISAM's SAM ViT tower: the official checkpoint layout loads strictly, the global-block outputs match a
reference written here from the state dict with plain torch ops, bad checkpoints fail in one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from risbench.cli.main import main
from risbench.errors import RisbenchError
from risbench.models.towers.sam_convert import convert_sam_image_encoder
from risbench.models.towers.sam_vit import SIZES, SamVitConfig, SamVitTower

DATA = Path(__file__).parent / "data"
DIM, DEPTH, HEADS, GLOBAL, WINDOW = SIZES["tiny-test"]
IMAGE, PATCH = 64, 16
GRID = IMAGE // PATCH


def official_tiny_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """A whole-SAM state dict in the official layout (image_encoder.* with its neck, a few prompt-encoder and
    mask-decoder tensors) for the tiny-test size, every tensor random (position tables too)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> Tensor:
        return scale * torch.randn(*shape, generator=g)

    hd = DIM // HEADS
    sd = {
        "image_encoder.pos_embed": r(1, GRID, GRID, DIM),
        "image_encoder.patch_embed.proj.weight": r(DIM, 3, PATCH, PATCH, scale=0.05),
        "image_encoder.patch_embed.proj.bias": r(DIM),
    }
    for i in range(DEPTH):
        p = f"image_encoder.blocks.{i}."
        side = GRID if i in GLOBAL else WINDOW
        sd |= {
            p + "norm1.weight": 1 + r(DIM),
            p + "norm1.bias": r(DIM),
            p + "attn.qkv.weight": r(3 * DIM, DIM),
            p + "attn.qkv.bias": r(3 * DIM),
            p + "attn.proj.weight": r(DIM, DIM),
            p + "attn.proj.bias": r(DIM),
            p + "attn.rel_pos_h": r(2 * side - 1, hd),
            p + "attn.rel_pos_w": r(2 * side - 1, hd),
            p + "norm2.weight": 1 + r(DIM),
            p + "norm2.bias": r(DIM),
            p + "mlp.lin1.weight": r(4 * DIM, DIM),
            p + "mlp.lin1.bias": r(4 * DIM),
            p + "mlp.lin2.weight": r(DIM, 4 * DIM),
            p + "mlp.lin2.bias": r(DIM),
        }
    sd |= {
        "image_encoder.neck.0.weight": r(256, DIM, 1, 1),
        "image_encoder.neck.1.weight": r(256),
        "image_encoder.neck.1.bias": r(256),
        "prompt_encoder.no_mask_embed.weight": r(1, 256),
        "mask_decoder.iou_token.weight": r(1, 256),
    }
    return sd


def _attention(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    """Multi-head attention over one (n, s, s, D) batch of square windows, with SAM's decomposed relative
    position bias: logit(q, k) += q . Rh[q_row - k_row + s - 1] + q . Rw[q_col - k_col + s - 1]."""
    n, s, _, d = x.shape
    hd = d // HEADS
    qkv = F.linear(x.reshape(n, s * s, d), sd[p + "qkv.weight"], sd[p + "qkv.bias"])
    q, k, v = qkv.reshape(n, s * s, 3, HEADS, hd).permute(2, 0, 3, 1, 4)  # each (n, heads, s*s, hd)
    logits = (q @ k.transpose(-1, -2)) / hd**0.5
    idx = torch.arange(s)[:, None] - torch.arange(s)[None, :] + s - 1  # (q, k) -> table row
    rh, rw = sd[p + "rel_pos_h"][idx], sd[p + "rel_pos_w"][idx]  # (s, s, hd)
    qg = q.reshape(n, HEADS, s, s, hd)
    bias_h = torch.einsum("nhabc,akc->nhabk", qg, rh)  # over key rows
    bias_w = torch.einsum("nhabc,bkc->nhabk", qg, rw)  # over key columns
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # (n, heads, s, s, s_k_row, s_k_col)
    logits = logits + bias.reshape(n, HEADS, s * s, s * s)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, s, s, d)
    return F.linear(out, sd[p + "proj.weight"], sd[p + "proj.bias"])


def reference_blocks(sd: dict[str, Tensor], image: Tensor) -> dict[int, Tensor]:
    """Every block's output (B, H, W, D), computed from the official state dict with plain torch ops: windowed
    blocks pad the normed map with zeros to a multiple of the window (the zeros take part as keys)."""
    e = {k.removeprefix("image_encoder."): v for k, v in sd.items()}
    x = F.conv2d(image, e["patch_embed.proj.weight"], e["patch_embed.proj.bias"], stride=PATCH)
    x = x.permute(0, 2, 3, 1) + e["pos_embed"]
    b, outs = image.shape[0], {}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (DIM,), e[p + "norm1.weight"], e[p + "norm1.bias"], 1e-6)
        if i in GLOBAL:
            h = _attention(h, e, p + "attn.")
        else:
            pad = -GRID % WINDOW
            hp = F.pad(h, (0, 0, 0, pad, 0, pad))
            nw = (GRID + pad) // WINDOW
            win = hp.reshape(b, nw, WINDOW, nw, WINDOW, DIM).permute(0, 1, 3, 2, 4, 5).reshape(-1, WINDOW, WINDOW, DIM)
            win = _attention(win, e, p + "attn.")
            hp = win.reshape(b, nw, nw, WINDOW, WINDOW, DIM).permute(0, 1, 3, 2, 4, 5).reshape(b, nw * WINDOW, -1, DIM)
            h = hp[:, :GRID, :GRID]
        x = x + h
        m = F.layer_norm(x, (DIM,), e[p + "norm2.weight"], e[p + "norm2.bias"], 1e-6)
        x = x + F.linear(
            F.gelu(F.linear(m, e[p + "mlp.lin1.weight"], e[p + "mlp.lin1.bias"])),
            e[p + "mlp.lin2.weight"],
            e[p + "mlp.lin2.bias"],
        )
        outs[i] = x
    return outs


def test_tiny_official_checkpoint_loads_strictly_and_global_blocks_match(tmp_path: Path) -> None:
    sd = official_tiny_state_dict()
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(sd, path)
    tower = SamVitTower(
        SamVitConfig(size="tiny-test", image_size=IMAGE, weights=str(path), attn_implementation="eager")
    )
    assert tower.ignored_keys == "image_encoder.neck.* (3), mask_decoder.* (1), prompt_encoder.* (1)"
    assert tower.out_layers == GLOBAL[1:]  # the 2nd, 3rd and 4th global blocks
    image = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = tower(image)
        ref = reference_blocks(sd, image)
    assert len(outs) == 3
    for out, i in zip(outs, GLOBAL[1:], strict=True):
        assert out.shape == (2, DIM, GRID, GRID)
        torch.testing.assert_close(out, ref[i].permute(0, 3, 1, 2), atol=1e-4, rtol=1e-4)
    sdpa = SamVitTower(SamVitConfig(size="tiny-test", image_size=IMAGE, weights=str(path)))
    with torch.no_grad():
        torch.testing.assert_close(sdpa(image)[-1], outs[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size, official", [("base", "vit_b"), ("huge", "vit_h")])
def test_official_layout_maps_key_by_key(size: str, official: str) -> None:
    """Every image-encoder key of the official SAM (names and shapes read off segment-anything@dca509f,
    tests/data/) lands on one of ours with its shape; the neck, prompt encoder and mask decoder are dropped."""
    shapes = json.loads((DATA / f"sam_{official}_official_keys.json").read_text())
    with torch.device("meta"):
        tower = SamVitTower(SamVitConfig(size=size))
        sd = {k: torch.empty(v) for k, v in shapes.items()}
    keys = convert_sam_image_encoder(sd)
    target = tower.model.state_dict()
    assert set(keys.tensors) == set(target)
    assert all(keys.tensors[k].shape == target[k].shape for k in target)
    assert set(keys.ignored) == {"image_encoder.neck", "prompt_encoder", "mask_decoder"}


def test_a_checkpoint_that_does_not_fit_fails_in_one_line(tmp_path: Path) -> None:
    sd = official_tiny_state_dict()
    path = tmp_path / "bad.pth"
    torch.save({k: v for k, v in sd.items() if "blocks.3.mlp" not in k}, path)
    with pytest.raises(RisbenchError) as info:
        SamVitTower(SamVitConfig(size="tiny-test", image_size=IMAGE, weights=str(path)))
    assert "\n" not in str(info.value) and "missing ['layers.3.mlp" in str(info.value)
    torch.save({**sd, "image_encoder.blocks.0.extra.weight": torch.zeros(1)}, path)
    with pytest.raises(RisbenchError, match="unexpected image encoder key 'blocks.0.extra.weight'"):
        SamVitTower(SamVitConfig(size="tiny-test", image_size=IMAGE, weights=str(path)))
    torch.save(sd, path)
    with pytest.raises(RisbenchError, match="shape mismatches"):  # the position table is for 64 px
        SamVitTower(SamVitConfig(size="tiny-test", image_size=96, weights=str(path)))


def test_bad_checkpoint_on_the_cli_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "sam.pth"
    path.write_bytes(b"not a checkpoint")
    args = ["flops", "--model", "risam-sam-tiny", "--set", f"encoder.vision.weights={path}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sam_vit" in err, err
