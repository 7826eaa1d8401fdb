"""RefSegformer's cross-attention-per-stage decoder, the one `args.py`'s defaults build (no `--use_pixel_decoder`;
jianzongwu/robust-ref-seg@e7c7da6f, model/segmentation_decoder_fusion.py::SegmentationDecoderFusion,
MultiScaleProj, and model/VLTF.py::ScaledDotProductAttention). Read, not copied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.decoders.refsegformer_common import (
    TwoClassConv,
    exists_of,
    full_mask,
    negative_weighted_ce,
    official_attention,
)
from risbench.models.interfaces import (
    Decoder,
    DecoderOutput,
    EncoderFeatures,
    FeatureSpec,
    FusedFeatures,
    FusedSpec,
    map_to_tokens,
    tokens_to_map,
)
from risbench.registry import DECODERS

MEMORY_SOURCES = ("auto", "fusion", "words")


class MultiScaleProj(nn.Module):
    """[Conv3x3 (no bias) -> BN -> ReLU] x 2, with the released key names conv1/norm1/conv2/norm2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))


@dataclass
class RefSegformerXattnConfig:
    """Options of the RefSegformer cross-attention decoder (defaults: args.py's with Swin-B's head counts)."""

    num_heads: tuple[int, ...] = (4, 8, 16, 32)  # per pyramid level (the Swin stage's; level 0 has no attention)
    n_fuse: int = 3  # levels 1..n_fuse get a cross-attention (args.n_fuse)
    memory_source: str = "auto"  # fusion: the encoder's stage-fusion memory; words: the words; auto: fusion if present
    use_mask: bool = True  # the auxiliary masks of levels 1..3 in the loss (--use_mask, as the README trains)
    aux_weight: float = 0.4  # args.aux_loss_weight
    neg_weight: float = 0.4  # args.neg_loss_weight, for the auxiliary masks (the registered loss has its own)
    full_resolution: bool = True  # auxiliary losses on logits upsampled to the input mask, as released

    def __post_init__(self) -> None:
        if self.memory_source not in MEMORY_SOURCES:
            raise ValueError(f"memory_source must be one of {', '.join(MEMORY_SOURCES)}, got '{self.memory_source}'")


@DECODERS.register("refsegformer_xattn", config=RefSegformerXattnConfig)
class RefSegformerXattnDecoder(Decoder):
    """RefSegformer's cross-attention decoder: top-down over the pyramid, a cross-attention to language tokens at
    each fused level, a 2-class mask per level.

    Pyramid (finest first, FPN trait `pyramid`; RefSegformer: Swin stage 1 and the VLTF outputs of stages 2-4).
    From the coarsest level k = n-1 down to 0: at levels 1..n_fuse, x <- x + BN(CrossAttn(x, memory_k)) (BN weight
    0 at init, so it starts as the identity; Swin's heads per stage); a mask conv (2 classes, returned as fg - bg)
    on x; then, above level 0, upsample x2 (bilinear, align_corners=True), concat level k-1 and MultiScaleProj to
    its width. Level 0's mask is the output (1/4); levels 1..3's are auxiliary (training only).
    Memory: the encoder's `memory` (VLTF's [blank; memory] tokens, no key mask), or, on an encoder without
    early fusion (`memory_source: words`, or `auto` without the trait), the last words through a Linear to each
    level's width with padding masked (our extension; the released model always has VLTF memories).
    `aux["exist_query"]`: the level-1 map before its cross-attention, the existence head's query as released.
    """

    requires = frozenset({"pyramid"})
    provides = frozenset({"exist_query"})
    tiny_options: ClassVar[dict[str, Any]] = {"num_heads": (1, 2, 2, 2)}

    def __init__(self, cfg: RefSegformerXattnConfig, in_spec: FusedSpec, enc_spec: FeatureSpec) -> None:
        super().__init__()
        dims = tuple(in_spec.pyramid_dims)
        n = len(dims)
        if len(cfg.num_heads) != n or not 0 <= cfg.n_fuse < n:
            raise IncompatibleError(
                f"incompatible components: decoder 'refsegformer_xattn' has num_heads {tuple(cfg.num_heads)} and "
                f"n_fuse {cfg.n_fuse}, but the fpn gives {n} pyramid levels (widths {dims}): give one head count per "
                f"level and n_fuse < {n}"
            )
        has_memory = "stage_memory" in enc_spec.traits
        if cfg.memory_source == "fusion" and not has_memory:
            raise IncompatibleError(
                "incompatible components: decoder 'refsegformer_xattn' memory_source 'fusion' needs an encoder with "
                f"early fusion (trait stage_memory), but the encoder provides {sorted(enc_spec.traits)}; "
                "set memory_source: words"
            )
        self.cfg = cfg
        self.aux_dims = {"exist_query": dims[1]} if n > 1 else {}
        self.use_fusion = cfg.memory_source == "fusion" or (cfg.memory_source == "auto" and has_memory)
        self.cross_attns = nn.ModuleList(official_attention(dims[i], cfg.num_heads[i]) for i in range(1, n))
        self.norms = nn.ModuleList(nn.BatchNorm2d(dims[i]) for i in range(1, n))
        for norm in self.norms:
            nn.init.zeros_(norm.weight)
        self.mask_convs = nn.ModuleList(TwoClassConv(d) for d in dims)
        self.projects = nn.ModuleList(MultiScaleProj(dims[i + 1] + dims[i], dims[i]) for i in range(n - 1))
        if not self.use_fusion:
            self.word_proj = nn.ModuleList(nn.Linear(enc_spec.text_dim, dims[i]) for i in range(1, cfg.n_fuse + 1))

    def _memory(self, level: int, feats: EncoderFeatures) -> tuple[Tensor, Tensor | None]:
        if self.use_fusion:
            mem = feats.memory[level] if feats.memory is not None else None
            if mem is None:
                raise RisbenchError(f"decoder 'refsegformer_xattn': the encoder gave no fusion memory at stage {level}")
            return mem, None
        return self.word_proj[level - 1](feats.text[-1]), (~feats.text_pad_mask)[:, None, None, :]

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures) -> DecoderOutput:
        pyramid = fused.pyramid
        x = pyramid[-1]
        masks: dict[int, Tensor] = {}
        aux: dict[str, Tensor] = {}
        for i in reversed(range(len(pyramid))):
            if i == 1:
                aux["exist_query"] = x
            if 0 < i <= self.cfg.n_fuse:
                mem, key_mask = self._memory(i, feats)
                att = self.cross_attns[i - 1](map_to_tokens(x), mem, key_mask=key_mask)
                x = x + self.norms[i - 1](tokens_to_map(att, tuple(x.shape[-2:])))
            if i == 0 or (self.training and self.cfg.use_mask):
                masks[i] = self.mask_convs[i](x)
            if i > 0:
                nxt = pyramid[i - 1]
                x = F.interpolate(x, size=nxt.shape[-2:], mode="bilinear", align_corners=True)
                x = self.projects[i - 1](torch.cat([x, nxt], dim=1))
        aux.update({f"mask_{i}": m for i, m in masks.items() if i > 0})
        return DecoderOutput(masks[0], aux)

    def extra_losses(self, out: DecoderOutput, target: Tensor, batch: dict) -> dict[str, Tensor]:
        """aux_weight x (CE(positives) + neg_weight x CE(negatives)) for each auxiliary mask (0.4 and 0.16)."""
        names = sorted(k for k in out.aux if k.startswith("mask_"))
        if not names:
            return {}
        mask = full_mask(target, batch, self.cfg.full_resolution, target.device)
        exists = exists_of(batch, target.shape[0], target.device)
        total = sum(negative_weighted_ce(out.aux[k], mask, exists, self.cfg.neg_weight) for k in names)
        return {"refsegformer_aux": self.cfg.aux_weight * total}
