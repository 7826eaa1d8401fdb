"""Released RefSegformer checkpoints (jianzongwu/robust-ref-seg@e7c7da6f) -> our components, strictly and key by key.

Layout as `main.py` saves it (`utils/util.py::save_checkpoint`): {'model': model_without_ddp.state_dict(),
'optimizer', 'lr_scheduler', 'epoch'}, so there is no DDP `module.` prefix (one is stripped if present). The
model (`model/refsegformer.py::RefSegFormer`) holds `text_encoder.*` (BERT), `image_encoder.*` (Swin with VLTF
modules at `image_encoder.layers.K.VLTF.*`) and `segmentation.*` (SegmentationDecoderFusion: both decoders'
modules and the existence head). Each key belongs to one PART; a part's converter (PART_CONVERTERS) turns its keys
into ours, relative to the module that holds the part. `load_refsegformer_checkpoint` loads a whole file into a
Segmenter (`risbench eval --weights` reaches it through risbench.train.weights).

- text (`text_encoder.` off): transformers' BertModel without its pooler (`pooler = None`), the same names as
  ours -> `encoder.text_encoder.*`.
- vision (`image_encoder.` off): the Swin body in the official Swin layout -> `encoder.swin.*` through the Swin
  converter (q/k/v split, transformers names); `layers.K.VLTF.*` -> `encoder.stage_fusion.fusions.{K+1}.*`, the
  same module names. Dropped: `layers.K.memory.weight` (an Embedding(1, C) built where a stage has no VLTF and
  never used) and `norm.*` (the final norm, not in the forward); `relative_position_index` is derived.
- exist_head (`segmentation.src_cross_attn.*`, `segmentation.exist_pred.*`, with `--use_exist`) ->
  `existence.*` of the `refsegformer` head: `fc_{q,k,v,o}` -> `{q,k,v,out}_proj`.
- decoder (the rest of `segmentation.`):
  both builds register the cross-attention decoder: `cross_attns.K.fc_{q,k,v,o}` -> `cross_attns.K.{q,k,v,out}_proj`,
  `norms.K` (BatchNorm1d; BatchNorm2d here, the same keys), `mask_convs.K`, `projects.K.{conv,norm}{1,2}`;
  `--use_pixel_decoder` adds `pixel_decoder.*` (mmcv names, the same as ours) and `mask_conv`. The cross-attention
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
from risbench.models.encoders.swin_convert import convert_swin_state_dict
from risbench.models.strict_load import load_strict

EXIST_HEAD = re.compile(r"segmentation\.(src_cross_attn|exist_pred)\.")
UNUSED_IN_PIXEL_BUILD = re.compile(r"(cross_attns|norms|mask_convs|projects)\.")
VLTF_KEY = re.compile(r"layers\.(\d+)\.VLTF\.(.+)")
# image_encoder keys our model does not hold: the never-used `memory` Embedding of a stage without VLTF and the
# final norm, which the forward never applies
UNUSED_VISION = re.compile(r"layers\.\d+\.memory\.weight|norm\.(weight|bias)")
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


def _attention_names(key: str) -> str:
    """`<p>.fc_{q,k,v,o}.<w>` (ScaledDotProductAttention) -> `<p>.{q,k,v,out}_proj.<w>` (our Attention)."""
    m = re.fullmatch(r"(.*)\.(fc_[qkvo])\.(weight|bias)", key)
    return f"{m[1]}.{_ATTN[m[2]]}.{m[3]}" if m else key


def _exist_part(sd: dict[str, Tensor], module: nn.Module) -> dict[str, Tensor]:
    out = {}
    for key, value in sd.items():
        if not re.fullmatch(r"(src_cross_attn\.fc_[qkvo]|exist_pred)\.(weight|bias)", key):
            raise RisbenchError(f"refsegformer checkpoint: unexpected existence-head key 'segmentation.{key}'")
        out[_attention_names(key)] = value
    return out


def _text_part(sd: dict[str, Tensor], module: nn.Module) -> dict[str, Tensor]:
    return {f"text_encoder.{k}": v for k, v in sd.items()}


def _vision_part(sd: dict[str, Tensor], module: nn.Module) -> dict[str, Tensor]:
    """Swin + VLTF keys (`image_encoder.` off) -> keys of our `swin_bert` encoder (`module`)."""
    out: dict[str, Tensor] = {}
    swin: dict[str, Tensor] = {}
    for key, value in sd.items():
        if m := VLTF_KEY.fullmatch(key):
            out[f"stage_fusion.fusions.{int(m[1]) + 1}.{m[2]}"] = value
        elif not UNUSED_VISION.fullmatch(key):
            swin[key] = value
    window = getattr(getattr(module, "cfg", None), "window_size", None)
    if window is None or not hasattr(module, "swin"):
        raise RisbenchError("refsegformer checkpoint: the model's encoder is not swin_bert (no Swin to load into)")
    target = {k: v for k, v in module.state_dict().items() if k.startswith(("swin.", "out_norms."))}
    converted, report = convert_swin_state_dict(swin, target, window, path="refsegformer checkpoint image_encoder")
    if report.unplaced:
        raise RisbenchError(f"refsegformer checkpoint: image_encoder keys with no place in Swin: {report.unplaced[:4]}")
    out.update(converted)
    return out


# part -> converter(official keys of the part, the module of ours that holds it) -> keys relative to it
PART_CONVERTERS: dict[str, Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]] = {
    "text": _text_part,
    "vision": _vision_part,
    "exist_head": _exist_part,
    "decoder": _decoder_part,
}
# part -> the Segmenter attribute (module) that holds it
PART_MODULES = {"text": "encoder", "vision": "encoder", "exist_head": "existence", "decoder": "decoder"}


def convert_refsegformer(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A released state dict -> the state-dict keys of our Segmenter `model` (encoder / decoder / existence)."""
    parts = split_parts(sd)
    if parts["exist_head"] and getattr(model, "existence", None) is None:
        raise RisbenchError(
            "refsegformer checkpoint: it holds an existence head (trained with --use_exist) but the model has none; "
            "add `existence: {name: refsegformer}` to the model (registry/models/refsegformer.yaml has it)"
        )
    out: dict[str, Tensor] = {}
    for part, keys in parts.items():
        attr = PART_MODULES[part]
        module = getattr(model, attr, None)
        if not keys or module is None:
            continue
        out.update({f"{attr}.{k}": v for k, v in PART_CONVERTERS[part](keys, module).items()})
    return out


def load_refsegformer_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a whole released RefSegformer ckpt.pth into our Segmenter `model`, strictly: every tensor of ours filled
    with its shape, every official tensor used (but the dropped ones above); one RisbenchError line otherwise."""
    converted = convert_refsegformer(read_refsegformer_checkpoint(path), model)
    load_strict(model, converted, f"refsegformer checkpoint {path}")


def load_refsegformer_decoder(decoder: nn.Module, path: str | Path) -> None:
    """Load the decoder part of a released RefSegformer checkpoint into `decoder` (refsegformer_pixel or
    refsegformer_xattn), strictly; the other parts are left out."""
    parts = split_parts(read_refsegformer_checkpoint(path))
    load_strict(decoder, PART_CONVERTERS["decoder"](parts["decoder"], decoder), f"refsegformer checkpoint {path}")
