"""CLIP text weights -> our clip_text tower's keys: from OpenAI's layout (ViT-B-16.pt's tensors, DETRIS's
`txt_backbone.*`) and from a Hugging Face CLIP checkpoint (`text_model.*`, `text_projection.weight`)."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from risbench.errors import RisbenchError

# OpenAI keys that the text tower does not hold: the image tower, the contrastive temperature, and the
# integer metadata a TorchScript CLIP carries
OPENAI_UNUSED = re.compile(r"visual\..*|logit_scale|input_resolution|context_length|vocab_size")
_BLOCK = {
    "ln_1": "layer_norm1",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "ln_2": "layer_norm2",
}


def convert_openai_clip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI-layout CLIP tensors -> tower keys; the fused in-projection is split, text_projection transposed.

    Image-tower keys and `logit_scale` are dropped (OPENAI_UNUSED); any other unknown key raises."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if OPENAI_UNUSED.fullmatch(key):
            continue
        if key == "token_embedding.weight":
            out["model.embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["model.embeddings.position_embedding.weight"] = value
        elif key in ("ln_final.weight", "ln_final.bias"):
            out["model.final_layer_norm." + key.split(".")[1]] = value
        elif key == "text_projection":
            out["projection.weight"] = value.t().contiguous()
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key):
            i, kind = m.groups()
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"model.encoder.layers.{i}.self_attn.{part}.{kind}"] = chunk.contiguous()
        elif (m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key)) and m[2] in _BLOCK:
            out[f"model.encoder.layers.{m[1]}.{_BLOCK[m[2]]}.{m[3]}"] = value
        else:
            raise RisbenchError(f"clip_text: unexpected checkpoint key '{key}'")
    return out


def convert_hf_clip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face CLIP keys -> tower keys: `text_model.*` -> `model.*`, `text_projection.weight` kept;
    the vision tower, its projection, `logit_scale` and `position_ids` buffers are dropped."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("text_model."):
            out["model." + key[len("text_model.") :]] = value
        elif key == "text_projection.weight":
            out["projection.weight"] = value
        elif key.startswith(("vision_model.", "visual_projection.")) or key == "logit_scale":
            continue
        else:
            raise RisbenchError(f"clip_text: unexpected Hugging Face key '{key}'")
    return out


def to_openai_clip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Tower keys -> OpenAI's CLIP text layout (the inverse of `convert_openai_clip`): q/k/v fused into
    `attn.in_proj_*`, `projection.weight` transposed into `text_projection`. Unknown keys raise."""
    block = {v: k for k, v in _BLOCK.items()}
    top = {
        "model.embeddings.token_embedding.weight": "token_embedding.weight",
        "model.embeddings.position_embedding.weight": "positional_embedding",
        "model.final_layer_norm.weight": "ln_final.weight",
        "model.final_layer_norm.bias": "ln_final.bias",
    }
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
        elif key == "projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif m := re.fullmatch(r"model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
        elif (m := re.fullmatch(r"model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)) and m[2] in block:
            out[f"transformer.resblocks.{m[1]}.{block[m[2]]}.{m[3]}"] = value
        else:
            raise RisbenchError(f"clip_text: unexpected tower key '{key}'")
    for (i, kind), parts in qkv.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
