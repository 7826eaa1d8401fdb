"""The Segmenter (encoder -> fpn -> decoder, and an existence head beside the decoder when the spec has
`existence:`) and the one factory that builds it from a model spec."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from risbench.models.interfaces import FPN, Decoder, DecoderOutput, Encoder, ExistenceHead
from risbench.registry import DECODERS, ENCODERS, EXISTENCE_HEADS, FPNS
from risbench.spec import MODEL_KEYS, check_traits, resolve_model_spec, validate_spec

# the logit an empty (forced "no object") mask gets: sigmoid is 0 in float32 and bf16, and it stays finite
# through any interpolation
EMPTY_LOGIT = -1.0e4


def force_empty(logits: Tensor, exist_logits: Tensor, threshold: float) -> Tensor:
    """Mask logits (B, 1, h, w) with every sample whose existence probability is below `threshold` set to
    EMPTY_LOGIT (an empty mask at any mask threshold), as the R-RIS code's evaluation does."""
    absent = torch.sigmoid(exist_logits.float()) < threshold
    return torch.where(absent[:, None, None, None], torch.full_like(logits, EMPTY_LOGIT), logits)


class Segmenter(nn.Module):
    """Referring segmenter: image + expression tokens -> mask logits (B, 1, h, w).

    With an existence head, the output also carries `exist_logits` (B,), and in eval mode the logits of a
    sample whose existence probability is below the head's `threshold` are forced empty (`force_empty`);
    in training mode the logits are the decoder's own. Without one, the output is the decoder's."""

    def __init__(
        self,
        encoder: Encoder,
        fpn: FPN,
        decoder: Decoder,
        spec: dict[str, Any],
        existence: ExistenceHead | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.fpn = fpn
        self.decoder = decoder
        self.existence = existence
        self.spec = spec

    def forward(self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor) -> DecoderOutput:
        feats = self.encoder(image, text_ids, text_pad_mask)
        fused = self.fpn(feats)
        out = self.decoder(fused, feats)
        if self.existence is not None:
            out.exist_logits = self.existence(fused, feats, out)
            if not self.training:
                out.logits = force_empty(out.logits, out.exist_logits, self.existence.cfg.threshold)
        return out

    @property
    def weights(self) -> str:
        """Where the encoder weights came from ('random' when none were loaded)."""
        return self.encoder.weights

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}


def build_segmenter(spec: dict[str, Any], where: str = "model") -> Segmenter:
    """Build a Segmenter from a resolved spec; unknown names/keys and incompatible parts raise."""
    parts = validate_spec(spec, where)
    (enc_name, enc_cfg), (fpn_name, fpn_cfg), (dec_name, dec_cfg) = (parts[k] for k in MODEL_KEYS)
    encoder = ENCODERS.get(enc_name).obj(enc_cfg)
    fpn_cls = FPNS.get(fpn_name).obj
    check_traits("fpn", fpn_name, fpn_cls.requires, "encoder", enc_name, encoder.out_spec.traits)
    fpn = fpn_cls(fpn_cfg, encoder.out_spec)
    dec_cls = DECODERS.get(dec_name).obj
    check_traits("decoder", dec_name, dec_cls.requires, "fpn", fpn_name, fpn.out_spec.traits)
    decoder = dec_cls(dec_cfg, fpn.out_spec, encoder.out_spec)
    existence = None
    if "existence" in parts:
        head_name, head_cfg = parts["existence"]
        head_cls = EXISTENCE_HEADS.get(head_name).obj
        check_traits("existence head", head_name, head_cls.requires, "fpn", fpn_name, fpn.out_spec.traits)
        check_traits(
            "existence head", head_name, head_cls.requires_encoder, "encoder", enc_name, encoder.out_spec.traits
        )
        check_traits("existence head", head_name, head_cls.requires_decoder, "decoder", dec_name, dec_cls.provides)
        existence = head_cls(head_cfg, fpn.out_spec, encoder.out_spec, dict(getattr(decoder, "aux_dims", {})))
    return Segmenter(encoder, fpn, decoder, copy.deepcopy(spec), existence)


def build_model(
    preset_or_spec: str | Path | dict[str, Any] = "shared-ris-b",
    overrides: list[str] | None = None,
    **sections: Any,
) -> Segmenter:
    """Public entry point: `build_model('shared-ris-b', fpn={'name': 'cris'})` or with `overrides=['fpn.name=cris']`."""
    return build_segmenter(resolve_model_spec(preset_or_spec, overrides, **sections))
