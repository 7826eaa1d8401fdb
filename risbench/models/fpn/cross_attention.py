"""The cross-attention FPN of Shared-RIS's fusion ablation (seed000 Table VII(b); docs/decisions.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from risbench.models.fpn.shared import SharedFPN, SharedFPNConfig, _check_single_width, _split_fused
from risbench.models.interfaces import EncoderFeatures, FeatureSpec, FusedFeatures, attention_mask_from_padding
from risbench.registry import FPNS


@dataclass
class CrossAttentionFPNConfig(SharedFPNConfig):
    """Options of the cross-attention FPN (the Shared FPN's: d_w, heads, multiway W_j, padding mask)."""


@FPNS.register("cross_attention", config=CrossAttentionFPNConfig)
class CrossAttentionFPN(SharedFPN):
    """Shared FPN with the fusion operator swapped for cross-attention: visual tokens query the text.

    Per stage j: [v; t] = h_j W_j (per modality, as the Shared FPN), u = LN([v; t]) with the Shared FPN's one
    LN per stage, v <- v + MHA(q = u_v, k = v = u_t) with padded words masked as keys, t passes through
    unchanged; then concat_j + W_f as the Shared FPN. The visual CLS is a query like the patches.
    Only the operator changes, so the parameters are exactly the Shared FPN's (4 d_w^2 per attention either way,
    the paper's "8M" for both), and the FLOPs drop by the text-query and patch-key products.
    FLAG reading (docs/decisions.md §2): visual queries / text keys-values, text passes through; the paper says no more.
    Counts (BEiT-3-B, 4 stages, 480 px, 20 tokens): 8.41M / 4.43G vs the paper's 8M / 6G. The paper's 6G fits
    projections over all 921 tokens per stage (e.g. the same attention also run text->vision, ~6.4G, or q/k/v/out
    computed for the whole joint sequence, ~6.35G); neither is implemented, as the paper describes neither.
    """

    def __init__(self, cfg: CrossAttentionFPNConfig, in_spec: FeatureSpec) -> None:
        _check_single_width(in_spec, "cross_attention")
        super().__init__(cfg, in_spec)

    def forward(self, feats: EncoderFeatures) -> FusedFeatures:
        grid = feats.visual[0].shape[-2:]
        has_cls = feats.visual_cls is not None
        num_prefix = grid[0] * grid[1] + int(has_cls)
        mask = attention_mask_from_padding(feats.text_pad_mask, 0) if self.cfg.mask_text_padding else None
        outs = []
        for k in range(len(self.proj)):
            v, t = self.projected_stage(feats, k)
            u = self.norm[k](torch.cat([v, t], dim=1))
            v = v + self.attn[k](u[:, :num_prefix], u[:, num_prefix:], key_mask=mask)
            outs.append(torch.cat([v, t], dim=1))
        z = self.fuse(torch.cat(outs, dim=-1))
        return _split_fused(z, num_prefix, has_cls, grid, feats.text_pad_mask)
