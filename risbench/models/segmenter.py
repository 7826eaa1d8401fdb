"""The Segmenter (encoder -> fpn -> decoder) and the one factory that builds it from a model spec."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from risbench.config import apply_overrides, find_preset, load_config, merge
from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.interfaces import FPN, Decoder, DecoderOutput, Encoder
from risbench.registry import DECODERS, ENCODERS, FPNS

MODEL_KEYS = ("encoder", "fpn", "decoder")
# Keys a model preset may carry besides the three components (documentation only).
MODEL_INFO_KEYS = ("description", "paper")


class Segmenter(nn.Module):
    """Referring segmenter: image + expression tokens -> mask logits (B, 1, h, w)."""

    def __init__(self, encoder: Encoder, fpn: FPN, decoder: Decoder, spec: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.fpn = fpn
        self.decoder = decoder
        self.spec = spec

    def forward(self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor) -> DecoderOutput:
        feats = self.encoder(image, text_ids, text_pad_mask)
        fused = self.fpn(feats)
        return self.decoder(fused, feats)

    @property
    def weights(self) -> str:
        """Where the encoder weights came from ('random' when none were loaded)."""
        return self.encoder.weights

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}


def resolve_model_spec(
    preset_or_spec: str | Path | dict[str, Any], overrides: list[str] | None = None, **sections: Any
) -> dict[str, Any]:
    """A full model spec dict from a preset name, a YAML path or a dict, with `--set`-style
    overrides ('fpn.name=cris') and section merges (fpn={'name': 'cris'}) applied."""
    if isinstance(preset_or_spec, dict):
        spec = copy.deepcopy(preset_or_spec)
    else:
        spec = load_config(find_preset("models", preset_or_spec))
    for key, value in sections.items():
        if key not in MODEL_KEYS:
            raise RisbenchError(f"build_model: unknown section '{key}'; expected one of {', '.join(MODEL_KEYS)}")
        spec = merge(spec, {key: value})
    # A new component name drops the old component's options (they belong to the old one).
    for item in overrides or []:
        key = item.split("=", 1)[0]
        if key.endswith(".name") and key.count(".") == 1 and key.split(".")[0] in MODEL_KEYS:
            section = key.split(".")[0]
            spec[section] = {"name": spec.get(section, {}).get("name")}
    spec = apply_overrides(spec, overrides)
    return spec


def build_segmenter(spec: dict[str, Any], where: str = "model") -> Segmenter:
    """Build a Segmenter from a resolved spec; unknown names/keys and incompatible parts raise."""
    unknown = set(spec) - set(MODEL_KEYS) - set(MODEL_INFO_KEYS)
    if unknown:
        raise RisbenchError(f"{where}: unknown key(s) {sorted(unknown)}; a model has encoder, fpn, decoder")
    parts = {}
    for key in MODEL_KEYS:
        section = spec.get(key)
        if not isinstance(section, dict) or "name" not in section:
            raise RisbenchError(f"{where}.{key}: expected a mapping with a 'name'")
        params = {k: v for k, v in section.items() if k != "name"}
        parts[key] = (section["name"], params)

    enc_name, enc_params = parts["encoder"]
    enc_cfg = ENCODERS.make_config(enc_name, enc_params, f"{where}.encoder")
    encoder = ENCODERS.get(enc_name).obj(enc_cfg)

    fpn_name, fpn_params = parts["fpn"]
    fpn_entry = FPNS.get(fpn_name)
    _check_traits("fpn", fpn_name, fpn_entry.obj.requires, "encoder", enc_name, encoder.out_spec.traits)
    fpn_cfg = FPNS.make_config(fpn_name, fpn_params, f"{where}.fpn")
    fpn = fpn_entry.obj(fpn_cfg, encoder.out_spec)

    dec_name, dec_params = parts["decoder"]
    dec_entry = DECODERS.get(dec_name)
    _check_traits("decoder", dec_name, dec_entry.obj.requires, "fpn", fpn_name, fpn.out_spec.traits)
    dec_cfg = DECODERS.make_config(dec_name, dec_params, f"{where}.decoder")
    decoder = dec_entry.obj(dec_cfg, fpn.out_spec, encoder.out_spec)
    return Segmenter(encoder, fpn, decoder, copy.deepcopy(spec))


def _check_traits(
    kind: str, name: str, needs: frozenset[str], other_kind: str, other: str, has: frozenset[str]
) -> None:
    missing = set(needs) - set(has)
    if missing:
        raise IncompatibleError(
            f"incompatible components: {kind} '{name}' needs {', '.join(sorted(missing))} but "
            f"{other_kind} '{other}' provides {', '.join(sorted(has)) or 'nothing'}"
        )


def build_model(
    preset_or_spec: str | Path | dict[str, Any] = "shared-ris-b",
    overrides: list[str] | None = None,
    **sections: Any,
) -> Segmenter:
    """Public entry point: `build_model('shared-ris-b', fpn={'name': 'cris'})` or with `overrides=['fpn.name=cris']`."""
    return build_segmenter(resolve_model_spec(preset_or_spec, overrides, **sections))
