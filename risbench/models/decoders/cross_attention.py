"""The cross-attention decoder of Shared-RIS's fusion ablation (seed000 Table VIII(b); docs/decisions.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from risbench.models.decoders.shared import (
    SharedDecoder,
    SharedDecoderConfig,
    SharedLayer,
    joint_sequence,
    split_joint_sequence,
)
from risbench.models.interfaces import (
    DecoderOutput,
    EncoderFeatures,
    FusedFeatures,
    attention_mask_from_padding,
)
from risbench.registry import DECODERS


class CrossAttentionLayer(SharedLayer):
    """Pre-LN layer: visual tokens attend to the words, then an MLP on the visual tokens; words unchanged.

    u = LN1([v; t]) (the Shared layer's one LN over the joint sequence), v <- v + MHA(u_v, u_t, u_t),
    v <- v + MLP(LN2(v)).
    """

    def forward(self, v: Tensor, t: Tensor, key_mask: Tensor | None) -> Tensor:
        v = v + self.attn(self.norm1(v), self.norm1(t), key_mask=key_mask)
        return v + self.mlp(self.norm2(v))


@dataclass
class CrossAttentionDecoderConfig(SharedDecoderConfig):
    """Options of the cross-attention decoder (the Shared decoder's: layers, heads, MLP ratio, padding, head)."""


@DECODERS.register("cross_attention", config=CrossAttentionDecoderConfig)
class CrossAttentionDecoder(SharedDecoder):
    """Shared decoder with the fusion operator swapped for cross-attention (visual queries, text keys/values).

    Each layer: visual tokens (CLS + patches) attend to the text tokens (padding masked), then the MLP on the
    visual tokens; the text tokens pass through unchanged, so the mask head's text CLS is the FPN's.
    Same parameters as the Shared decoder (attention 4 d_w^2 + MLP), fewer FLOPs: 8.66M / 48.7G at BEiT-3-B, 480 px,
    20 tokens, vs the paper's 9M / 48G (Table VIII(b)).
    FLAG reading (docs/decisions.md §3): the paper names only "cross-attention"; MLP ratio 4 as the Shared layer.
    """

    layer_cls = CrossAttentionLayer

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures) -> DecoderOutput:
        seq, num_visual = joint_sequence(fused)
        v, t = seq[:, :num_visual], seq[:, num_visual:]
        mask = attention_mask_from_padding(fused.text_pad_mask, 0) if self.cfg.mask_text_padding else None
        for layer in self.layers:
            v = layer(v, t, mask)
        visual, text = split_joint_sequence(torch.cat([v, t], dim=1), num_visual, fused)
        return DecoderOutput(self.head(visual, text[:, 0]))
