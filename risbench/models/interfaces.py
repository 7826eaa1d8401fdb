"""What flows between encoder -> fpn -> decoder, and what each side declares it provides and requires.

Traits (strings) are how components declare compatibility; `build_segmenter` checks them and fails
with a message that names both sides. Vocabulary:
  joint_tokens   visual and text tokens come from one joint sequence at the same width (single encoder)
  single_scale   every visual stage has the same grid (a plain ViT)
  multi_scale    visual stages form a pyramid of strides (Swin, a simple feature pyramid)
  visual_cls     a visual CLS token travels with the visual features
  text_tokens    per-word text features travel with the output
  pyramid        (FPN output) a multi-scale list of fused maps travels with the output
  sentence       a sentence vector (B, sentence_dim) travels with the output (CLIP's projected EOT feature)
  stage_memory   (encoder output) `memory` holds a stage fusion's sentence tokens (VLTF's [blank; memory])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class FeatureSpec:
    """Static description of an encoder's output (channels and strides per stage, text width)."""

    visual_dims: tuple[int, ...]
    visual_strides: tuple[int, ...]
    text_dim: int
    traits: frozenset[str]
    sentence_dim: int = 0  # width of `EncoderFeatures.sentence` (trait "sentence"); 0 when there is none
    # per output stage, the width and head count of `EncoderFeatures.memory[k]` (0 where that stage has none;
    # empty without the trait "stage_memory")
    memory_dims: tuple[int, ...] = ()
    memory_heads: tuple[int, ...] = ()


@dataclass
class EncoderFeatures:
    """Per-stage encoder outputs.

    visual: (B, C_k, H_k, W_k) per stage (patch grid only, no CLS);
    text: (B, L, C_t) per stage (a dual encoder repeats its final text states);
    text_pad_mask: (B, L) bool, True on padding; visual_cls: (B, C_k) per stage, or None;
    sentence: (B, S) sentence vector (trait "sentence"), or None;
    memory: per stage, the tokens a stage fusion made from the sentence (B, M, C_k) or None (trait
    "stage_memory": RefSegformer's VLTF [blank; memory] tokens), or None without a stage fusion.
    """

    visual: list[Tensor]
    text: list[Tensor]
    text_pad_mask: Tensor
    visual_cls: list[Tensor] | None = None
    sentence: Tensor | None = None
    memory: list[Tensor | None] | None = None


@dataclass(frozen=True)
class FusedSpec:
    """Static description of an FPN's output."""

    dim: int
    stride: int
    traits: frozenset[str]
    pyramid_dims: tuple[int, ...] = ()  # channels of `FusedFeatures.pyramid`, finest first
    pyramid_strides: tuple[int, ...] = ()
    sentence_dim: int = 0  # width of `FusedFeatures.sentence` (trait "sentence"); 0 when there is none


@dataclass
class FusedFeatures:
    """The FPN's output: one fused visual map plus text tokens at the same width `dim`.

    visual: (B, D, H, W); text: (B, L, D); text_pad_mask: (B, L) True on pad; visual_cls: (B, D) or None;
    pyramid: optional multi-scale fused maps, finest first (LAVT-style FPNs over a pyramid encoder);
    sentence: (B, S) sentence vector (trait "sentence"), or None.
    """

    visual: Tensor
    text: Tensor
    text_pad_mask: Tensor
    visual_cls: Tensor | None = None
    pyramid: list[Tensor] | None = None
    sentence: Tensor | None = None


@dataclass
class DecoderOutput:
    """Mask logits (B, 1, h, w) (the Shared head: 4x the patch grid, i.e. 1/4 of the input at patch 16), plus
    training-only extras (auxiliary predictions) that a decoder's `extra_losses` turns into loss terms."""

    logits: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)
    # (B,) logit that the expression refers to something, set by the model's existence head (`existence:` in
    # the model spec; risbench.models.existence); `risbench predict` prints its sigmoid when it is set
    exist_logits: Tensor | None = None


class AttentionMaps:
    """Where each word looks (Shared-RIS Figs. 7-8): components with attention from the text tokens to the
    image patches record it when asked. `keep_attention(True)` before a forward; `attention_maps()` after
    it gives {name: (B, L, H, W)}: per text token, its softmax weights on the patch grid, mean over heads.
    Components without such attention return {} (the default)."""

    def keep_attention(self, on: bool = True) -> None:
        """Start (clearing what was kept) or stop keeping attention maps in forward."""
        object.__setattr__(self, "_kept_attention", {} if on else None)

    def attention_maps(self) -> dict[str, Tensor]:
        """The maps the last forward kept, in forward order."""
        return dict(getattr(self, "_kept_attention", None) or {})

    @property
    def keeping_attention(self) -> bool:
        return getattr(self, "_kept_attention", None) is not None

    def _keep(self, name: str, probs: Tensor, patches: slice, text: slice, grid: tuple[int, int]) -> None:
        """Keep `probs` (B, heads, N, N) of a joint sequence: rows `text`, columns `patches`, on `grid`."""
        maps = probs.detach().float().mean(dim=1)[:, text, patches]
        self._kept_attention[name] = maps.reshape(maps.shape[0], maps.shape[1], *grid).cpu()


class Encoder(AttentionMaps, nn.Module):
    """Base class of encoders: `forward(image, text_ids, text_pad_mask) -> EncoderFeatures`."""

    tokenizer_family: ClassVar[str] = "sentencepiece"
    # mean/std the images are normalised with (per encoder family)
    pixel_mean: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)
    pixel_std: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)
    # how images reach the square input: stretch (LAVT, CGFormer) or letterbox (CRIS, DETRIS; data/transforms.py)
    input_resize: str = "stretch"
    out_spec: FeatureSpec
    image_size: int
    vocab_size: int
    weights: str  # "random" or the path the weights came from
    # the OBJECTIVES name `risbench pretrain` uses for this family when the config names none
    pretrain_objective: ClassVar[str | None] = None
    # options that build a small instance: the contract tests (tests/test_contracts.py) build every
    # registered component with them, at CPU speed
    tiny_options: ClassVar[dict[str, Any]] = {}

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) excluded from weight decay."""
        return set()


class FPN(AttentionMaps, nn.Module):
    """Base class of FPNs/necks: `forward(EncoderFeatures) -> FusedFeatures`."""

    requires: ClassVar[frozenset[str]] = frozenset()
    # options that build a small instance: the contract tests (tests/test_contracts.py) build every
    # registered component with them, at CPU speed
    tiny_options: ClassVar[dict[str, Any]] = {}
    out_spec: FusedSpec


class Decoder(AttentionMaps, nn.Module):
    """Base class of decoders: `forward(FusedFeatures, EncoderFeatures) -> DecoderOutput`.

    `provides`: the keys of `DecoderOutput.aux` it fills in every forward for an existence head to read (e.g.
    "exist_query"), checked against a head's `requires_decoder`; `aux_dims` (an instance attribute, set in
    `__init__` by a decoder that provides any) their channel widths."""

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    # options that build a small instance: the contract tests (tests/test_contracts.py) build every
    # registered component with them, at CPU speed
    tiny_options: ClassVar[dict[str, Any]] = {}

    def extra_losses(self, out: DecoderOutput, target: Tensor, batch: dict) -> dict[str, Tensor]:
        """Weighted auxiliary loss terms for training (CGFormer, DMMI); none by default.

        target: (B, 1, H, W) float mask at the logits' resolution."""
        return {}


class ExistenceHead(nn.Module):
    """Base class of existence heads (the EXISTENCE_HEADS registry, risbench.models.existence): whether the
    referred object is in the image, one logit per sample.

    Built as `cls(cfg, fused_spec, encoder_spec, aux_dims)` (`aux_dims`: the decoder's, {} when it has none)
    next to the decoder when the model spec has an `existence:` section;
    `requires` are FPN-output traits it needs (checked like a decoder's), `requires_encoder` encoder traits
    and `requires_decoder` keys the decoder `provides` in `out.aux`. forward(fused, feats, out)
    reads what the FPN handed the decoder (`fused`: visual map, words + pad mask, sentence when the trait
    "sentence" is there), the encoder's features (`feats`) and the decoder's output (`out`: the mask logits,
    and in `out.aux` any inner feature a decoder exposes for a head that documents the key it reads)
    -> (B,) logits. The trainer adds the existence BCE (train.loss.existence_weight) against the batch's
    `exists`; a decoder must not add it again. At evaluation the Segmenter forces an empty mask where
    sigmoid(logit) < `cfg.threshold` (0.5, as the R-RIS code), so every config has a `threshold` field."""

    requires: ClassVar[frozenset[str]] = frozenset()
    requires_encoder: ClassVar[frozenset[str]] = frozenset()
    requires_decoder: ClassVar[frozenset[str]] = frozenset()
    tiny_options: ClassVar[dict[str, Any]] = {}

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures, out: DecoderOutput) -> Tensor:
        raise NotImplementedError


class PretrainObjective(nn.Module):
    """Base class of encoder pretraining objectives (`risbench pretrain`): it holds the encoder and its own
    heads, and turns a batch without masks into a loss. `requires` are encoder traits it needs.

    forward(batch) -> (loss, {term: float}); `export()` gives {file name (may hold a folder): bytes written as
    they are, or an object to torch.save}, the
    encoder in its family's official checkpoint layout (heads outside the encoder's prefix);
    `encoder_options(directory)` the encoder options that load those files (e.g. {"weights": ...})."""

    requires: ClassVar[frozenset[str]] = frozenset()
    encoder: Encoder

    def export(self) -> dict[str, object]:
        raise NotImplementedError

    continues: ClassVar[bool] = False  # whether `continue_export` is implemented (a config's `continue_from`)

    def continue_export(self, directory) -> None:
        """Start from what `export` wrote to `directory` (a staged pretraining's `continue_from`)."""
        raise NotImplementedError

    @staticmethod
    def encoder_options(directory) -> dict[str, str]:
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}


def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, H*W, D) -> (B, D, H, W)."""
    b, n, d = tokens.shape
    return tokens.transpose(1, 2).reshape(b, d, grid[0], grid[1])


def map_to_tokens(fmap: Tensor) -> Tensor:
    """(B, D, H, W) -> (B, H*W, D)."""
    return fmap.flatten(2).transpose(1, 2)


_UNPADDED = [False]


@contextlib.contextmanager
def unpadded_text(active: bool = True) -> Iterator[None]:
    """Within (when `active`): the caller has checked on the host that no text token of the batch is padding,
    so `attention_mask_from_padding` returns None and SDPA may take its flash kernel (no mask)."""
    prev = _UNPADDED[0]
    _UNPADDED[0] = active
    try:
        yield
    finally:
        _UNPADDED[0] = prev


def attention_mask_from_padding(pad_mask: Tensor, num_prefix: int) -> Tensor | None:
    """Key mask for SDPA over [prefix tokens (never masked); text tokens]: (B, 1, 1, N) bool, True = attend;
    None inside `unpadded_text()` (every key is attended: the same attention without a mask)."""
    if _UNPADDED[0]:
        return None
    keep_prefix = torch.ones(pad_mask.shape[0], num_prefix, dtype=torch.bool, device=pad_mask.device)
    return torch.cat([keep_prefix, ~pad_mask], dim=1)[:, None, None, :]


class Adapter(nn.Module):
    """Base class of PEFT adapters that a tower injects into its frozen blocks (risbench.models.adapters).

    Placement: in parallel with the block's FFN; `scale * adapter(...)` is added to the FFN output (inside
    the tower's layer scale, if it has one). `reads` says what the adapter sees: "ffn_input" (the FFN's
    normed input, DINOv2 + DenseAligner) or "residual" (the residual stream after attention, CLIP +
    TextAdapter). forward(x (B, P, D), prefix (tokens before the patch grid / the words), grid (H, W) or
    None, context (B, L, C) or None, context_pad_mask (B, L) or None) -> (B, P, D)."""

    reads: ClassVar[str] = "ffn_input"
    needs_context: ClassVar[bool] = False
    tiny_options: ClassVar[dict[str, Any]] = {}
    scale: float


class VisionTower(nn.Module):
    """Base class of vision towers: `forward(image, context, context_pad_mask) -> list of (B, C, H, W) maps`.

    `context` (text features) is passed to adapters that need it (None when none does)."""

    out_dims: tuple[int, ...]
    out_strides: tuple[int, ...]
    traits: frozenset[str]
    image_size: int
    weights: str
    tiny_options: ClassVar[dict[str, Any]] = {}


class TextTower(nn.Module):
    """Base class of text towers: `forward(text_ids, text_pad_mask) -> (words (B, L, D), sentence (B, S))`."""

    dim: int
    sentence_dim: int
    vocab_size: int
    max_text_len: int
    weights: str
    tokenizer_family: ClassVar[str] = "clip_bpe"
    tiny_options: ClassVar[dict[str, Any]] = {}
