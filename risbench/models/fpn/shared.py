"""The Shared FPN of Shared-RIS (seed000 §III-B, Eq. 6-7) and the `none` variant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from risbench.errors import IncompatibleError
from risbench.models.interfaces import (
    FPN,
    EncoderFeatures,
    FeatureSpec,
    FusedFeatures,
    FusedSpec,
    attention_mask_from_padding,
    map_to_tokens,
    tokens_to_map,
)
from risbench.models.layers import Attention
from risbench.registry import FPNS


class ModalityLinear(nn.Module):
    """Per-modality ("multiway") linear map: visual tokens and text tokens get their own weights.

    Used for the stage projections W_j: the paper writes one W_j, but a shared one gives 6.8M params
    for K=4 against the paper's 8M, while per-modality projections (as BEiT-3's multiway layers are)
    give 8.4M / 6.3M / 4.2M for K = 4 / 3 / 2 against the paper's 8 / 6 / 4M. Set `multiway: false`
    for the single shared projection.
    """

    def __init__(self, din: int, dout: int, multiway: bool = True) -> None:
        super().__init__()
        self.visual = nn.Linear(din, dout)
        self.text = nn.Linear(din, dout) if multiway else self.visual

    def forward(self, visual: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        return self.visual(visual), self.text(text)


def _joint_tokens(feats: EncoderFeatures, k: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """(visual patch tokens, text tokens, visual cls) of stage k."""
    cls = feats.visual_cls[k] if feats.visual_cls is not None else None
    return map_to_tokens(feats.visual[k]), feats.text[k], cls


def _check_single_width(spec: FeatureSpec, name: str) -> int:
    dims = set(spec.visual_dims) | {spec.text_dim}
    if len(dims) != 1 or len(set(spec.visual_strides)) != 1:
        raise IncompatibleError(
            f"incompatible components: fpn '{name}' needs every stage at one width and one grid, "
            f"but the encoder gives visual dims {spec.visual_dims}, strides {spec.visual_strides}, "
            f"text dim {spec.text_dim}"
        )
    return spec.text_dim


@dataclass
class SharedFPNConfig:
    """Options of the Shared FPN."""

    dim: int = 512  # d_w
    num_heads: int = 8
    multiway_proj: bool = True  # per-modality W_j (see ModalityLinear)
    mask_text_padding: bool = True


@FPNS.register("shared", config=SharedFPNConfig)
class SharedFPN(FPN):
    """Shared FPN: per stage, project joint tokens to d_w and run one self-attention over vision+text.

    z_j = MSA(LN(h_j W_j)) + h_j W_j for each selected stage j (no MLP), then z = concat_j(z_j) W_f.
    Decisions on the paper's open points (docs/decisions.md §2 Shared FPN): 8 heads (head dim 64); W_j per modality
    (`multiway_proj`); padded text tokens are masked as attention keys; no final LayerNorm (the
    decoder is pre-LN). The number of stages is the number of layers the encoder returns
    (`encoder.out_indices`).
    """

    tiny_options: ClassVar[dict[str, Any]] = {"dim": 16, "num_heads": 2}

    requires = frozenset({"joint_tokens", "single_scale"})

    def __init__(self, cfg: SharedFPNConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        din = _check_single_width(in_spec, "shared")
        k = len(in_spec.visual_dims)
        self.cfg = cfg
        self.proj = nn.ModuleList([ModalityLinear(din, cfg.dim, cfg.multiway_proj) for _ in range(k)])
        self.norm = nn.ModuleList([nn.LayerNorm(cfg.dim) for _ in range(k)])
        self.attn = nn.ModuleList([Attention(cfg.dim, cfg.num_heads) for _ in range(k)])
        self.fuse = nn.Linear(k * cfg.dim, cfg.dim)
        self.out_spec = FusedSpec(cfg.dim, in_spec.visual_strides[-1], frozenset({"text_tokens", "visual_cls"}))

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        grid = feats.visual[0].shape[-2:]
        has_cls = feats.visual_cls is not None
        num_prefix = grid[0] * grid[1] + int(has_cls)
        mask = attention_mask_from_padding(feats.text_pad_mask, num_prefix) if self.cfg.mask_text_padding else None
        outs = []
        for k in range(len(self.proj)):
            h = torch.cat(self.projected_stage(feats, k), dim=1)
            if self.keeping_attention:
                probs = self.attn[k].probs(self.norm[k](h), key_mask=mask)
                self._keep(f"fpn stage {k + 1}", probs, slice(int(has_cls), num_prefix), slice(num_prefix, None), grid)
            outs.append(self.attn[k](self.norm[k](h), key_mask=mask) + h)
        z = self.fuse(torch.cat(outs, dim=-1))
        return _split_fused(z, num_prefix, has_cls, grid, feats.text_pad_mask)

    def projected_stage(self, feats: EncoderFeatures, k: int) -> tuple[Tensor, Tensor]:
        """Stage k's visual tokens ([cls,] patches) and text tokens, each projected to d_w by W_k."""
        vis, txt, cls = _joint_tokens(feats, k)
        if cls is not None:
            vis = torch.cat([cls[:, None], vis], dim=1)
        return self.proj[k](vis, txt)


def _split_fused(z: Tensor, num_prefix: int, has_cls: bool, grid, pad_mask: Tensor) -> FusedFeatures:
    vis, txt = z[:, :num_prefix], z[:, num_prefix:]
    cls = vis[:, 0] if has_cls else None
    patches = vis[:, 1:] if has_cls else vis
    return FusedFeatures(tokens_to_map(patches, tuple(grid)), txt, pad_mask, cls)


@dataclass
class NoFPNConfig:
    """Options of the `none` FPN."""

    dim: int = 512
    multiway_proj: bool = True


@FPNS.register("none", config=NoFPNConfig)
class NoFPN(FPN):
    """No FPN: the last encoder stage only, projected to d_w (per modality), no fusion.

    The paper's "w/o FPN" row feeds the last layer to the decoder; it needs some d -> d_w map that the
    paper does not describe (docs/decisions.md §2 FLAG). We use the same per-modality linear as the Shared
    FPN's W_j, so the only difference from `shared` is the multi-stage self-attention.
    """

    tiny_options: ClassVar[dict[str, Any]] = {"dim": 16}

    requires = frozenset({"joint_tokens"})

    def __init__(self, cfg: NoFPNConfig, in_spec: FeatureSpec) -> None:
        super().__init__()
        if in_spec.visual_dims[-1] != in_spec.text_dim:
            raise IncompatibleError(
                f"incompatible components: fpn 'none' needs the last visual stage and the text at one width, "
                f"got {in_spec.visual_dims[-1]} and {in_spec.text_dim}"
            )
        self.proj = ModalityLinear(in_spec.text_dim, cfg.dim, cfg.multiway_proj)
        self.out_spec = FusedSpec(cfg.dim, in_spec.visual_strides[-1], frozenset({"text_tokens", "visual_cls"}))

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        vis, txt, cls = _joint_tokens(feats, -1)
        grid = feats.visual[-1].shape[-2:]
        has_cls = cls is not None
        if has_cls:
            vis = torch.cat([cls[:, None], vis], dim=1)
        v, t = self.proj(vis, txt)
        return _split_fused(torch.cat([v, t], 1), v.shape[1], has_cls, grid, feats.text_pad_mask)
