"""Official SAM checkpoints (facebookresearch/segment-anything `sam_vit_{b,l,h}_*.pth`) -> the keys of
transformers' `SamVisionEncoder`, image encoder only.

The official file holds the whole SAM: `image_encoder.*` (patch embedding, position table, blocks, neck),
`prompt_encoder.*` and `mask_decoder.*`. Only the image encoder's patch embedding, position table and
blocks are taken; the neck (256-channel 1x1 + 3x3 convs with LayerNorms), the prompt encoder and the mask
decoder are not used by RISAM, so their keys are dropped and reported (`SamKeys.ignored`). A bare image
encoder state dict (no `image_encoder.` prefix) is accepted too.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from torch import Tensor

from risbench.errors import RisbenchError

ENCODER_PREFIX = "image_encoder."
# whole-SAM prefixes that RISAM does not use (dropped and listed)
IGNORED_PREFIXES = ("prompt_encoder.", "mask_decoder.", "neck.")
# official block sub-module -> transformers' SamVisionLayer sub-module
_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn": "attn", "mlp": "mlp"}


@dataclass
class SamKeys:
    """The converted tensors and what was left out, by top-level group (e.g. {'mask_decoder': 131})."""

    tensors: dict[str, Tensor]
    ignored: Counter = field(default_factory=Counter)

    def ignored_summary(self) -> str:
        return ", ".join(f"{k}.* ({n})" for k, n in sorted(self.ignored.items())) or "none"


def convert_sam_image_encoder(sd: dict[str, Tensor]) -> SamKeys:
    """Official SAM keys -> transformers SamVisionEncoder keys (neck excluded). Unknown keys raise."""
    bare = not any(k.startswith(ENCODER_PREFIX) for k in sd)
    out: dict[str, Tensor] = {}
    ignored: Counter = Counter()
    for key, value in sd.items():
        if not bare:
            if not key.startswith(ENCODER_PREFIX):
                if key.startswith(IGNORED_PREFIXES):
                    ignored[key.split(".", 1)[0]] += 1
                    continue
                raise RisbenchError(f"sam checkpoint: unexpected key '{key}'")
            key = key[len(ENCODER_PREFIX) :]
        if key.startswith("neck."):
            ignored["image_encoder.neck"] += 1
            continue
        out[_encoder_key(key)] = value
    return SamKeys(out, ignored)


def _encoder_key(key: str) -> str:
    if key == "pos_embed":
        return key
    if key.startswith("patch_embed.proj."):
        return "patch_embed.projection." + key[len("patch_embed.proj.") :]
    m = re.fullmatch(r"blocks\.(\d+)\.(norm1|norm2|attn|mlp)\.(.+)", key)
    if m is None:
        raise RisbenchError(f"sam checkpoint: unexpected image encoder key '{key}'")
    i, part, rest = m.groups()
    return f"layers.{i}.{_BLOCK[part]}.{rest}"
