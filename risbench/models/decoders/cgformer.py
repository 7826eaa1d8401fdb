"""The CGFormer decoder (contrastive grouping with learnable tokens; SooLab/CGFormer, model/layers.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import IncompatibleError
from risbench.models.interfaces import (
    Decoder,
    DecoderOutput,
    EncoderFeatures,
    FeatureSpec,
    FusedFeatures,
    FusedSpec,
    map_to_tokens,
)
from risbench.models.layers import Mlp, conv_bn_relu, sdpa_heads
from risbench.models.pyramid import PYRAMID_STRIDES, DecoderPyramid, PyramidConfig, match_size
from risbench.registry import DECODERS

HIT_MAP_WEIGHTS = (0.001, 0.01, 0.1)  # Dice on the target-token hit maps, stages 1..3 (segmenter.py)


class Fusion(nn.Module):
    """Resize the smaller map to the larger (bilinear, align_corners=True), concat, [Conv3x3-BN-ReLU] x2."""

    def __init__(self, dim_prev: int, dim_next: int, out_dim: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *conv_bn_relu(dim_prev + dim_next, out_dim, 3, bias=True), *conv_bn_relu(out_dim, out_dim, 3, bias=True)
        )

    def forward(self, prev: Tensor, nxt: Tensor) -> Tensor:
        if prev.shape[-1] < nxt.shape[-1]:
            prev = match_size(prev, nxt.shape[-2:])
        elif prev.shape[-1] > nxt.shape[-1]:
            nxt = match_size(nxt, prev.shape[-2:])
        return self.convs(torch.cat([prev, nxt], dim=1))


class TokenCrossAttention(nn.Module):
    """One-head cross-attention of the target token to the words: bias-free q/k/v, output Linear with
    bias, padded words masked (CGFormer's `CrossAttn` inside `LoadToken`)."""

    def __init__(self, dim: int, kv_dim: int, dropout: float) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(kv_dim, dim, bias=False)
        self.v_proj = nn.Linear(kv_dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, context: Tensor, key_mask: Tensor) -> Tensor:
        out = sdpa_heads(self.q_proj(query), self.k_proj(context), self.v_proj(context), 1, key_mask)
        return self.drop(self.out_proj(out))


class LoadLayer(nn.Module):
    """Stage-wise "load": the target (last) token reads the words, then all tokens <- MLP(LN(tokens)).

    Every stage owns a learnable positional table for its visual grid; only stages after the first
    load text (the released code: `pe_shape > 30`, i.e. the 60^2 and 120^2 stages at 480 px)."""

    def __init__(self, dim: int, text_dim: int, grid: int, load: bool, dropout: float, unused: bool) -> None:
        super().__init__()
        self.grid = grid
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid, dim) / math.sqrt(dim))
        self.load = load
        if load:
            self.norm_q = nn.LayerNorm(dim)
            self.norm_k = nn.LayerNorm(text_dim)
            self.cross_attn = TokenCrossAttention(dim, text_dim, dropout)
            self.norm = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, 2 * dim)
            if unused:  # the released LoadToken also registers a LayerNorm and an MLP it never calls
                self.unused_norm = nn.LayerNorm(dim)
                self.unused_mlp = Mlp(dim, 2 * dim)

    def forward(self, tokens: Tensor, text: Tensor, key_mask: Tensor) -> Tensor:
        if not self.load:
            return tokens
        others, target = tokens[:, :-1], tokens[:, -1:]
        target = target + self.cross_attn(self.norm_q(target), self.norm_k(text), key_mask)
        tokens = torch.cat([others, target], dim=1)
        return self.mlp(self.norm(tokens))  # replaces the tokens: no residual, as released

    def pos_embed(self, h: int, w: int) -> Tensor:
        """(h*w, D); bilinearly resized from the stored grid when the input size differs."""
        pe = self.positional_embedding
        if (h, w) == (self.grid, self.grid):
            return pe
        table = pe.T.reshape(1, -1, self.grid, self.grid)
        table = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False)
        return table.reshape(pe.shape[1], h * w).T


class CGAttention(nn.Module):
    """Grouping: cosine scores token x pixel, hard (Gumbel-)softmax over the tokens, tokens gather pixels.

    Straight-through one-hot assignment of each pixel to one token; temperature exp(min(tau, 0));
    each token's row divided by (its pixel count + 1); tokens <- MLP(LN(proj(assign @ v) + tokens)).
    Training samples Gumbel noise as released; evaluation is deterministic unless `eval_noise`.
    """

    def __init__(self, dim: int, dropout: float, eval_noise: bool) -> None:
        super().__init__()
        self.norm_v = nn.LayerNorm(dim)
        self.norm_t = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)
        self.tau = nn.Parameter(torch.ones(1))
        self.eval_noise = eval_noise

    def forward(self, tokens: Tensor, vis: Tensor, pe: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = vis.shape
        x = self.norm_v(map_to_tokens(vis) + pe)
        q = F.normalize(self.q_proj(self.norm_t(tokens)), dim=-1, eps=1e-12)
        k = F.normalize(self.k_proj(x), dim=-1, eps=1e-12)
        scores = torch.matmul(q, k.transpose(1, 2))  # (B, T, HW)
        tau = self.tau.clamp(max=0).exp()
        if self.training or self.eval_noise:
            scores = scores - torch.empty_like(scores).exponential_().log()  # + Gumbel(0, 1) noise
        soft = (scores / tau).softmax(dim=1)
        hard = torch.zeros_like(soft).scatter_(1, soft.argmax(dim=1, keepdim=True), 1.0)
        assign = hard - soft.detach() + soft  # straight-through one-hot over the tokens
        attn = assign / (assign.sum(dim=-1, keepdim=True) + 1)
        new = self.drop(self.proj(torch.matmul(attn, self.v_proj(x))))
        tokens = self.mlp(self.norm(new + tokens))
        return tokens, assign.reshape(b, -1, h, w)


class DynamicProjector(nn.Module):
    """CGFormer's DProjector: [x2 up -> Conv3x3-BN-ReLU] x2 -> Conv1x1, then a per-sample 1x1 kernel and
    bias from the target token (Linear(token -> C + 1)), applied as a dot product per pixel."""

    def __init__(self, dim: int, token_dim: int, num_upsample: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(2):
            if i < num_upsample:
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            layers += list(conv_bn_relu(dim, dim, 3))
        layers.append(nn.Conv2d(dim, dim, 1))
        self.vis = nn.Sequential(*layers)
        self.txt = nn.Linear(token_dim, dim + 1)

    def forward(self, x: Tensor, token: Tensor) -> Tensor:
        x = self.vis(x)
        kernel = self.txt(token)
        weight, bias = kernel[:, :-1], kernel[:, -1]
        return torch.einsum("bchw,bc->bhw", x, weight).unsqueeze(1) + bias[:, None, None, None]


@dataclass
class CGFormerDecoderConfig:
    """Options of the CGFormer decoder."""

    token_dim: int = 512
    num_tokens: int = 2  # the last one is the target token
    dropout: float = 0.1
    image_size: int = 480  # sizes the per-stage positional tables (input/16, /8, /4); others interpolate
    output_stride: int = 4  # 4: logits at 1/4 (our contract); 1: as released (full resolution), see docstring
    eval_noise: bool = False  # Gumbel noise at evaluation too (the released code samples it always)
    pyramid_source: str = "fpn"  # fpn | encoder (when the FPN provides no pyramid)
    pyramid_encoder_stages: tuple[int, ...] = (0, 1)  # pyramid_source=encoder: stages for strides 4, 8, ...
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    release_unused_params: bool = False  # also register the released LoadToken's never-called LN + MLP


@DECODERS.register("cgformer", config=CGFormerDecoderConfig)
class CGFormerDecoder(Decoder):
    """CGFormer decoder: 2 learnable tokens group pixels over 3 stages (1/16 -> 1/8 -> 1/4), dynamic head.

    As the released ("updated version") code does it (docs/decisions.md §3 CGFormer): stage i fuses the running map
    with the next-finer pyramid level (Fusion), lets the target token read the words (stages 2-3, with
    the following MLP replacing the tokens), adds the stage's learnable positional table and runs
    CGAttention (stage 1 its own, stages 2 and 3 one shared module); the target token then gives the
    dynamic 1x1 kernel of DProjector.

    Decisions / FLAG readings:
    - Pyramid (c1..c4 at strides 4/8/16/32): `FusedFeatures.pyramid` when the FPN provides one (a
      LAVT-style Swin model); otherwise a ViTDet simple feature pyramid built from the FPN's single map
      (`pyramid_source: fpn`, default) or from selected encoder stages for the finest levels
      (`encoder`; Shared-RIS §IV-C only says the decoder uses "high-resolution features from the visual
      encoder"). Default widths are Swin-B's (128, 256, 512, 1024), so the decoder itself is the
      released one; `pyramid.out_convs: false` keeps only ViTDet's deconvolutions / pooling.
    - Text: the FPN's text tokens (width D) with their padding mask; k/v of the load attention map
      D -> token_dim (the released code hard-codes BERT's 768).
    - Output: the released DProjector upsamples twice to full resolution (its two 512-channel 3x3 convs
      at 240^2 and 480^2 are ~680 of the 857 GFLOPs of Shared-RIS Table V). Our contract is logits at
      1/4, so `output_stride: 4` (default) runs the same convs without upsampling (at 120^2);
      `output_stride: 1` reproduces the released cost and area-pools the full-resolution logits to 1/4.
      The released dynamic 1x1 conv uses padding 1 (a 482^2 output interpolated back); we use none.
    - Gumbel: training adds Gumbel(0, 1) noise as released; evaluation uses the noiseless hard
      assignment (deterministic), although the released code samples noise at test time too.
    - Dropout on the attention probabilities of the load attention is left out (SDPA); dropout after
      the projections is kept. The hit-map auxiliary Dice applies a sigmoid to the (0/1) hit maps, as the
      released `dice_loss` does.
    - `release_unused_params`: the released LoadToken registers a LayerNorm and an MLP that it never
      uses (2.1M at token_dim 512); off by default, on to count parameters as the released code does.
    """

    tiny_options: ClassVar[dict[str, Any]] = {"token_dim": 16, "image_size": 64, "pyramid": {"dims": (8, 8, 16, 16)}}

    requires = frozenset({"text_tokens"})

    def __init__(self, cfg: CGFormerDecoderConfig, in_spec: FusedSpec, enc_spec: FeatureSpec) -> None:
        super().__init__()
        if cfg.output_stride not in (1, 2, 4):
            raise IncompatibleError(f"decoder 'cgformer': output_stride must be 1, 2 or 4, got {cfg.output_stride}")
        self.cfg = cfg
        d = cfg.token_dim
        self.pyramid = DecoderPyramid(
            "cgformer", cfg.pyramid_source, cfg.pyramid_encoder_stages, cfg.pyramid, in_spec, enc_spec
        )
        c1, c2, c3, c4 = self.pyramid.dims
        self.tokens = nn.Parameter(torch.empty(cfg.num_tokens, d))
        nn.init.trunc_normal_(self.tokens, std=0.02)
        grids = [max(1, cfg.image_size // s) for s in PYRAMID_STRIDES[2::-1]]  # 1/16, 1/8, 1/4
        self.loads = nn.ModuleList(
            [LoadLayer(d, in_spec.dim, g, i > 0, cfg.dropout, cfg.release_unused_params) for i, g in enumerate(grids)]
        )
        self.cga_first = CGAttention(d, cfg.dropout, cfg.eval_noise)
        self.cga_shared = CGAttention(d, cfg.dropout, cfg.eval_noise)  # stages 2 and 3 share it
        self.fuses = nn.ModuleList([Fusion(c4, c3, d), Fusion(d, c2, d), Fusion(d, c1, d)])
        self.proj = DynamicProjector(d, d, int(math.log2(4 // cfg.output_stride)))

    def forward(self, fused: FusedFeatures, feats: EncoderFeatures) -> DecoderOutput:
        c1, c2, c3, c4 = self.pyramid(fused, feats)
        key_mask = (~fused.text_pad_mask)[:, None, None, :]
        tokens = self.tokens[None].expand(c1.shape[0], -1, -1)
        hit_maps = []
        v = c4
        for i, (fuse, load, nxt) in enumerate(zip(self.fuses, self.loads, (c3, c2, c1), strict=True)):
            v = fuse(v, nxt)
            tokens = load(tokens, fused.text, key_mask)
            cga = self.cga_first if i == 0 else self.cga_shared
            tokens, hit = cga(tokens, v, load.pos_embed(*v.shape[-2:]))
            hit_maps.append(hit[:, -1:])
        logits = self.proj(v, tokens[:, -1])
        if self.cfg.output_stride != 4:
            logits = F.adaptive_avg_pool2d(logits, c1.shape[-2:])
        aux = {f"hit_map_{i}": m for i, m in enumerate(hit_maps)} if self.training else {}
        return DecoderOutput(logits, aux)

    def extra_losses(self, out: DecoderOutput, target: Tensor, batch: dict) -> dict[str, Tensor]:
        """Dice on the target token's hit map at each stage, weighted 0.001 / 0.01 / 0.1."""
        losses = {}
        for i, weight in enumerate(HIT_MAP_WEIGHTS):
            hit = out.aux.get(f"hit_map_{i}")
            if hit is None:
                continue
            t = target if hit.shape[-2:] == target.shape[-2:] else F.interpolate(target, hit.shape[-2:])
            losses[f"hit_dice_{i}"] = weight * dice_loss(hit, t.detach())
        return losses


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CGFormer's Dice: per sample 1 - (2 sum(p t) + 1) / (sum p + sum t + 1), p = sigmoid; batch mean."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
