"""Released RefSegformer checkpoints (jianzongwu/robust-ref-seg@e7c7da6f) -> our components, strictly and key by key.

Layout as `main.py` saves it (`utils/util.py::save_checkpoint`): {'model': model_without_ddp.state_dict(),
'optimizer', 'lr_scheduler', 'epoch'}, so there is no DDP `module.` prefix (one is stripped if present). The
model (`model/refsegformer.py::RefSegFormer`) holds `text_encoder.*` (BERT), `image_encoder.*` (Swin with VLTF
modules at `image_encoder.layers.K.VLTF.*`) and `segmentation.*` (SegmentationDecoderFusion: both decoders'
modules and the existence head). Each key belongs to one PART; a part's converter turns its keys into ours.
Only the decoder part is converted here; the text, vision and existence-head parts are listed so that their
converters can be added (PART_CONVERTERS) without touching the split.

Decoder keys (`segmentation.` off):
- both builds register the cross-attention decoder: `cross_attns.K.fc_{q,k,v,o}` -> `cross_attns.K.{q,k,v,out}_proj`,
  `norms.K` (BatchNorm1d; BatchNorm2d here, the same keys), `mask_convs.K`, `projects.K.{conv,norm}{1,2}`;
- `--use_pixel_decoder` adds `pixel_decoder.*` (mmcv names, the same as ours) and `mask_conv`. The cross-attention
  modules above are then registered but never called: `refsegformer_pixel` drops them (UNUSED_IN_PIXEL_BUILD),
  or holds them with `release_unused_params: true`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.models.strict_load import load_strict

EXIST_HEAD = re.compile(r"segmentation\.(src_cross_attn|exist_pred)\.")
UNUSED_IN_PIXEL_BUILD = re.compile(r"(cross_attns|norms|mask_convs|projects)\.")
_ATTN = {"fc_q": "q_proj", "fc_k": "k_proj", "fc_v": "v_proj", "fc_o": "out_proj"}


def read_refsegformer_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The model tensors of a RefSegformer ckpt.pth (weights-only; the 'model' wrapper and `module.` off)."""
    path = Path(path)
    if not path.is_file():
        raise RisbenchError(f"refsegformer checkpoint: {path} does not exist (expected logs/<exp>/ckpt.pth)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RisbenchError(f"refsegformer checkpoint: cannot read {path} weights-only: {exc}") from None
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise RisbenchError(f"refsegformer checkpoint: {path} holds no state dict under 'model'")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}


def split_parts(sd: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Official keys by part: text (BERT), vision (Swin + VLTF), exist_head, decoder; each with its prefix off."""
    parts: dict[str, dict[str, Tensor]] = {"text": {}, "vision": {}, "exist_head": {}, "decoder": {}}
    for key, value in sd.items():
        if key.startswith("text_encoder."):
            parts["text"][key[len("text_encoder.") :]] = value
        elif key.startswith("image_encoder."):
            parts["vision"][key[len("image_encoder.") :]] = value
        elif EXIST_HEAD.match(key):
            parts["exist_head"][key[len("segmentation.") :]] = value
        elif key.startswith("segmentation."):
            parts["decoder"][key[len("segmentation.") :]] = value
        else:
            raise RisbenchError(f"refsegformer checkpoint: unexpected key '{key}'")
    return parts


def convert_decoder(sd: dict[str, Tensor], kind: str, keep_unused: bool = False) -> dict[str, Tensor]:
    """Official decoder keys (`segmentation.` off, existence head excluded) -> our `refsegformer_<kind>` keys;
    `keep_unused`: keep the pixel build's never-called cross-attention modules (release_unused_params)."""
    if kind not in ("pixel", "xattn"):
        raise RisbenchError(f"refsegformer checkpoint: decoder kind must be 'pixel' or 'xattn', got '{kind}'")
    out: dict[str, Tensor] = {}
    has_pixel = any(k.startswith("pixel_decoder.") for k in sd)
    if kind == "pixel" and not has_pixel:
        raise RisbenchError(
            "refsegformer checkpoint: no pixel_decoder.* keys (trained without --use_pixel_decoder); "
            "use decoder refsegformer_xattn"
        )
    for key, value in sd.items():
        if key.startswith("pixel_decoder."):
            if kind == "xattn":
                raise RisbenchError(
                    f"refsegformer checkpoint: '{key}' is a pixel-decoder key (trained with --use_pixel_decoder); "
                    "use decoder refsegformer_pixel"
                )
            out[key[len("pixel_decoder.") :]] = value
        elif key.startswith("mask_conv."):
            out[key] = value
        elif UNUSED_IN_PIXEL_BUILD.match(key):
            if kind == "xattn" or keep_unused:
                m = re.fullmatch(r"cross_attns\.(\d+)\.(fc_[qkvo])\.(weight|bias)", key)
                out[f"cross_attns.{m[1]}.{_ATTN[m[2]]}.{m[3]}" if m else key] = value
        else:
            raise RisbenchError(f"refsegformer checkpoint: unexpected decoder key 'segmentation.{key}'")
    return out


def _decoder_part(sd: dict[str, Tensor], module: nn.Module) -> dict[str, Tensor]:
    kind = "pixel" if hasattr(module, "mask_conv") else "xattn"
    return convert_decoder(sd, kind, keep_unused=kind == "pixel" and hasattr(module, "cross_attns"))


# part -> converter(official keys of the part, our module) -> our keys; text / vision / exist_head come later
PART_CONVERTERS: dict[str, Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]] = {"decoder": _decoder_part}




def load_refsegformer_decoder(decoder: nn.Module, path: str | Path) -> None:
    """Load the decoder part of a released RefSegformer checkpoint into `decoder` (refsegformer_pixel or
    refsegformer_xattn), strictly; the text, vision and existence-head parts are left to their own loaders."""
    parts = split_parts(read_refsegformer_checkpoint(path))
    load_strict(decoder, PART_CONVERTERS["decoder"](parts["decoder"], decoder), f"refsegformer checkpoint {path}")
