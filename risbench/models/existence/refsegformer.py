"""RefSegformer's own existence head (jianzongwu/robust-ref-seg@e7c7da6f, model/segmentation_decoder_fusion.py,
`src_cross_attn` / `avgpool` / `exist_pred`, built with `--use_exist`; read, not copied). docs/decisions.md,
"RefSegformer existence head and full checkpoint".

Queries: the decoder's feature before its first cross-attention stage, `out.aux["exist_query"]` (the pixel
decoder's mask feature at H/4, or the cross-attention decoder's level-1 map before its attention). Keys and
values: the memory tokens of the first stage that has them, i.e. the first VLTF's [blank; memory] tokens
(`feats.memory[k]`, trait `stage_memory`; the released code reads `memory_list[1]`, Swin stage 2, which is the
first VLTF at n_fuse 3). Both are detached, so the head's BCE trains the head only. One cross-attention
(`ScaledDotProductAttention` of that stage's width and Swin head count, no key mask), the mean over the query
positions (`AdaptiveAvgPool1d(1)`), Linear -> 1. The released model applies a sigmoid and an
nn.BCELoss; this head returns the logit, and the trainer's BCE-with-logits (train.loss.existence_weight, 1.0
as `exist_loss_weight`) is the same loss. The query width must equal the memory's: the released code builds
the attention at the stage's width for both (256 for Swin-B, which is also the pixel decoder's width).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.decoders.refsegformer_common import official_attention
from risbench.models.interfaces import (
    DecoderOutput,
    EncoderFeatures,
    ExistenceHead,
    FeatureSpec,
    FusedFeatures,
    FusedSpec,
    map_to_tokens,
)
from risbench.registry import EXISTENCE_HEADS

QUERY_KEY = "exist_query"


@dataclass
class RefSegformerExistenceConfig:
    """Options of RefSegformer's existence head (released: the first memory stage, its Swin heads, both detached)."""

    num_heads: int | None = None  # null: the Swin stage's head count where the memory comes from (Swin-B: 8)
    detach: bool = True  # released: queries and memory detached, the BCE trains the head only
    threshold: float = 0.5  # evaluation: sigmoid(logit) < threshold forces an empty mask (utils/validation.py)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] (0: never force an empty mask), got {self.threshold}")
        if self.num_heads is not None and self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1 or null, got {self.num_heads}")


@EXISTENCE_HEADS.register("refsegformer", config=RefSegformerExistenceConfig)
class RefSegformerExistenceHead(ExistenceHead):
    """Cross-attention from the decoder's pre-attention feature to the first VLTF memory, mean-pooled -> logit."""

    requires_encoder = frozenset({"stage_memory"})
    requires_decoder = frozenset({QUERY_KEY})

    def __init__(
        self,
        cfg: RefSegformerExistenceConfig,
        fused_spec: FusedSpec,
        encoder_spec: FeatureSpec,
        aux_dims: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        stages = [k for k, d in enumerate(encoder_spec.memory_dims) if d]
        if not stages:
            raise IncompatibleError(
                "incompatible components: existence head 'refsegformer' needs the width of a stage memory, but the "
                f"encoder's spec gives none (memory_dims {encoder_spec.memory_dims}); use a stage fusion such as vltf"
            )
        self.stage = stages[0]
        dim = encoder_spec.memory_dims[self.stage]
        query_dim = (aux_dims or {}).get(QUERY_KEY)
        if query_dim is None:
            raise IncompatibleError(
                f"incompatible components: existence head 'refsegformer' needs the decoder's '{QUERY_KEY}' width, "
                f"but the decoder gives {sorted(aux_dims or {}) or 'none'}"
            )
        if query_dim != dim:
            raise IncompatibleError(
                f"incompatible components: existence head 'refsegformer' attends from the decoder's '{QUERY_KEY}' "
                f"(width {query_dim}) to the encoder's first stage memory (stage output {self.stage}, width {dim}); "
                "the widths must match (released: both 256), e.g. set the pixel decoder's dim to the memory's width"
            )
        heads = cfg.num_heads or encoder_spec.memory_heads[self.stage]
        if dim % heads:
            raise RisbenchError(f"existence head 'refsegformer': num_heads {heads} does not divide the width {dim}")
        self.src_cross_attn = official_attention(dim, heads)
        self.exist_pred = nn.Linear(dim, 1)

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures, out: DecoderOutput) -> Tensor:
        query = out.aux.get(QUERY_KEY)
        memory = feats.memory[self.stage] if feats.memory is not None and len(feats.memory) > self.stage else None
        if query is None or memory is None:
            missing = f"out.aux['{QUERY_KEY}']" if query is None else f"feats.memory[{self.stage}]"
            raise RisbenchError(f"existence head 'refsegformer': the model gave no {missing} in this forward")
        if self.cfg.detach:
            query, memory = query.detach(), memory.detach()
        attended = self.src_cross_attn(map_to_tokens(query), memory)  # (B, HW, C)
        return self.exist_pred(attended.mean(dim=1))[:, 0]
