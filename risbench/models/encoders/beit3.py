"""BEiT-3 multiway transformer encoder, key-compatible with the official unilm/torchscale checkpoints.

Our own implementation of the encoder described in docs/decisions.md §1 BEiT-3 (seed000 §III-A; reference layout:
microsoft/torchscale `model/BEiT3.py`, `architecture/encoder.py`, `component/multihead_attention.py`,
`component/multiway_network.py`, `component/embedding.py`, `component/feedforward_network.py`).
Every module and parameter name maps 1:1 onto an official key once its "beit3." prefix is removed,
so `load_beit3_weights` can check a checkpoint key by key (see beit3_checkpoint.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from risbench.errors import RisbenchError, unknown_name_message
from risbench.models.encoders.beit3_checkpoint import load_beit3_weights
from risbench.models.encoders.beit3_layers import POSITION_OFFSET, Beit3Body, VisionEmbed
from risbench.models.interfaces import (
    Encoder,
    EncoderFeatures,
    FeatureSpec,
    attention_mask_from_padding,
    tokens_to_map,
)
from risbench.registry import ENCODERS

logger = logging.getLogger(__name__)

# width, depth, heads; the FFN is 4x the width (unilm beit3/modeling_utils.py: base, large).
# "tiny" is ours, for CPU tests and smoke runs.
BEIT3_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 4, 3),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
# parameters torchscale's sub-LN ("Magneto") init multiplies by sqrt(log(2 * depth))
MAGNETO_SCALED = ("fc1", "fc2", "out_proj", "v_proj")
INITS = ("torchscale", "scratch", "scratch_sincos")
STEMS = ("patch", "conv")


@dataclass
class Beit3Config:
    """Options of the BEiT-3 encoder."""

    size: str = "base"  # tiny | base | large
    image_size: int = 480
    patch_size: int = 16
    vocab_size: int = 64010
    embed_dim: int | None = None  # overrides the size's width
    depth: int | None = None  # overrides the size's number of layers
    num_heads: int | None = None  # overrides the size's number of heads
    out_indices: tuple[int, ...] = (3, 6, 9, 12)  # 1-based layer outputs returned to the FPN
    drop_path: float = 0.1  # stochastic depth of the last layer (linear from 0 at the first)
    weights: str | None = None  # an official BEiT-3 checkpoint (.pth); None = random init
    max_text_positions: int = 1024
    layernorm_eps: float = 1e-5
    # random init (ignored when weights are loaded): torchscale (the reference encoder's) or scratch
    # (N(0, 0.02) text and position embeddings, trunc-normal(0.02) Linear, as ViT/BERT from scratch)
    # or scratch_sincos (scratch, with the patch positions starting as fixed 2-D sine-cosine, as MAE)
    init: str = "torchscale"
    stem: str = "patch"  # patch (BEiT-3's) | conv (a convolutional stem, for training from random init)


def resolve_dims(cfg: Beit3Config) -> tuple[int, int, int]:
    """(width, depth, heads) from the size preset and the explicit overrides; invalid values raise."""
    if cfg.size not in BEIT3_SIZES:
        raise RisbenchError(f"encoder beit3: unknown size '{cfg.size}'; known: {', '.join(BEIT3_SIZES)}")
    if cfg.init not in INITS:
        raise RisbenchError(unknown_name_message("encoder beit3 init", cfg.init, INITS))
    if cfg.stem not in STEMS:
        raise RisbenchError(unknown_name_message("encoder beit3 stem", cfg.stem, STEMS))
    width, depth, heads = BEIT3_SIZES[cfg.size]
    width = cfg.embed_dim or width
    depth = cfg.depth or depth
    heads = cfg.num_heads or heads
    if width % heads:
        raise RisbenchError(f"encoder beit3: embed_dim {width} is not divisible by num_heads {heads}")
    if cfg.image_size % cfg.patch_size:
        raise RisbenchError(
            f"encoder beit3: image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}"
        )
    idx = tuple(cfg.out_indices)
    if not idx or any(j < 1 or j > depth for j in idx) or list(idx) != sorted(set(idx)):
        raise RisbenchError(
            f"encoder beit3: out_indices {list(idx)} must be increasing layer numbers within 1..{depth} "
            f"(1-based; depth {depth})"
        )
    return width, depth, heads


def sincos_2d(grid: int, dim: int) -> Tensor:
    """(grid*grid, dim) fixed 2-D sine-cosine positions (MAE's): half the channels code the row, half the
    column, each as sin and cos at dim/4 frequencies."""
    if dim % 4:
        raise RisbenchError(f"encoder beit3: init scratch_sincos needs embed_dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


@ENCODERS.register("beit3", config=Beit3Config)
class Beit3Encoder(Encoder):
    """BEiT-3 multiway transformer (vision + text in one joint sequence), official checkpoint layout.

    forward(image (B,3,S,S), text_ids (B,L), text_pad_mask (B,L) True=pad) -> EncoderFeatures with, for
    each j in `out_indices`: the patch map (B, d, S/p, S/p), the visual CLS (B, d) and the text tokens
    (B, L, d). `text_ids` come framed by the tokenizer as [<s>, tokens..., </s>, <pad>...], so the text
    CLS is text index 0.

    Sequence: [vis_cls, patches] + position table A rows 2..n+2, then text embeddings + table B rows
    2..L+2 (position ids start at 2, fairseq style). Padded text embeddings are zeroed and padded text
    is masked as attention keys (torchscale's encoder_padding_mask); multiway copy A (vision) serves
    the first n+1 tokens, copy B (language) the text tokens; only the softmax runs over the joint
    sequence.

    Decision on docs/decisions.md §1 BEiT-3 FLAG (pre- or post-final-LN features): an intermediate layer j < depth
    is returned as torchscale's `encoder_states[j]`, i.e. *before* the final multiway LayerNorm; for
    j == depth the final multiway LayerNorm (`encoder.layer_norm`) is applied, i.e. torchscale's
    `encoder_out`. Layers after the last out index are not run (they would feed nothing).

    Random init (`init`): "torchscale" follows the reference encoder: nn defaults (position tables
    N(0, 1)), text embedding N(0, d^-0.5), zero cls/mask tokens, then every fc1/fc2/out_proj/v_proj
    weight and bias multiplied by sqrt(log(2 * depth)) (sub-LN / Magneto init). That suits loading a
    checkpoint, but from scratch a word's embedding is ~14x smaller than its position's, so the text
    barely reaches the joint attention for hundreds of steps. "scratch" (for training from random init)
    draws text and position embeddings from N(0, 0.02) and Linear weights from trunc-normal(0.02) with
    zero biases, as ViT and BERT do, and keeps the Magneto scaling. `weights` loads an official checkpoint.
    """

    tiny_options: ClassVar[dict[str, Any]] = {
        "size": "tiny",
        "image_size": 32,
        "patch_size": 16,
        "depth": 2,
        "out_indices": (1, 2),
        "vocab_size": 100,
    }

    tokenizer_family = "sentencepiece"
    pretrain_objective = "beit3_mdm"
    pixel_mean = (0.5, 0.5, 0.5)
    pixel_std = (0.5, 0.5, 0.5)

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        dim, depth, heads = resolve_dims(cfg)
        self.cfg = cfg
        self.embed_dim, self.depth, self.num_heads = dim, depth, heads
        self.image_size = cfg.image_size
        self.patch_size = cfg.patch_size
        self.vocab_size = cfg.vocab_size
        self.grid = cfg.image_size // cfg.patch_size
        self.num_vision_tokens = self.grid * self.grid + 1
        self.out_indices = tuple(cfg.out_indices)

        self.text_embed = nn.Embedding(cfg.vocab_size, dim)
        self.vision_embed = VisionEmbed(dim, cfg.patch_size, cfg.stem)
        self.encoder = Beit3Body(
            dim, depth, heads, self.num_vision_tokens, cfg.max_text_positions, cfg.layernorm_eps, cfg.drop_path
        )
        self._init_weights()

        k = len(self.out_indices)
        self.out_spec = FeatureSpec(
            visual_dims=(dim,) * k,
            visual_strides=(cfg.patch_size,) * k,
            text_dim=dim,
            traits=frozenset({"joint_tokens", "single_scale", "visual_cls", "text_tokens"}),
        )
        self.load_report = None
        if cfg.weights is None:
            logger.warning("beit3: no weights given, random init")
            self.weights = "random"
        else:
            self.load_report = load_beit3_weights(self, cfg.weights)
            self.weights = str(cfg.weights)

    @torch.no_grad()
    def _init_weights(self) -> None:
        if self.cfg.init in ("scratch", "scratch_sincos"):
            for module in self.encoder.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            for table in (self.text_embed, self.encoder.embed_positions.A, self.encoder.embed_positions.B):
                nn.init.normal_(table.weight, mean=0.0, std=0.02)
            if self.cfg.init == "scratch_sincos":
                rows = self.encoder.embed_positions.A.weight[POSITION_OFFSET + 1 :]  # patches; CLS row stays
                rows.copy_(sincos_2d(self.grid, self.embed_dim))
        else:
            nn.init.normal_(self.text_embed.weight, mean=0.0, std=self.embed_dim**-0.5)
        scale = math.sqrt(math.log(2 * self.depth))
        for name, p in self.encoder.named_parameters():
            if any(key in name for key in MAGNETO_SCALED):
                p.mul_(scale)

    def no_weight_decay(self) -> set[str]:
        return {
            "encoder.embed_positions.A.weight",
            "encoder.embed_positions.B.weight",
            "vision_embed.cls_token",
            "vision_embed.mask_token",
        }

    def embed(self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor, patch_mask: Tensor | None = None) -> Tensor:
        """The layer-0 joint sequence (B, n+1+L, d): embeddings + positions, padded text zeroed. Patches
        where `patch_mask` (B, n) is True are replaced by `mask_token` first (masked image modelling)."""
        return torch.cat([self._embed_image(image, patch_mask), self._embed_text(text_ids, text_pad_mask)], dim=1)

    def _embed_image(self, image: Tensor, patch_mask: Tensor | None = None) -> Tensor:
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise RisbenchError(
                f"encoder beit3: expected {self.image_size}x{self.image_size} images, got "
                f"{tuple(image.shape[-2:])}; set encoder.image_size"
            )
        vis = self.vision_embed(image)
        if patch_mask is not None:
            keep = torch.cat([torch.zeros_like(patch_mask[:, :1]), patch_mask], dim=1).unsqueeze(-1)
            vis = torch.where(keep, self.vision_embed.mask_token.to(vis.dtype), vis)
        return vis + self.encoder.embed_positions.A.weight[POSITION_OFFSET : POSITION_OFFSET + self.num_vision_tokens]

    def _embed_text(self, text_ids: Tensor, text_pad_mask: Tensor) -> Tensor:
        length = text_ids.shape[1]
        positions = self.encoder.embed_positions.B
        if length + POSITION_OFFSET > positions.num_embeddings:
            raise RisbenchError(
                f"encoder beit3: text length {length} exceeds max_text_positions "
                f"{positions.num_embeddings} - {POSITION_OFFSET}"
            )
        txt = self.text_embed(text_ids) + positions.weight[POSITION_OFFSET : POSITION_OFFSET + length]
        return txt * (~text_pad_mask).unsqueeze(-1).to(txt.dtype)

    def final_sequence(
        self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor, patch_mask: Tensor | None = None
    ) -> Tensor:
        """Every layer, then the final multiway LayerNorm: the joint sequence (B, n+1+L, d) that
        pretraining heads read (torchscale's `encoder_out`), whatever `out_indices` says."""
        split = self.num_vision_tokens
        x = self.embed(image, text_ids, text_pad_mask, patch_mask)
        return self._all_layers(x, split, attention_mask_from_padding(text_pad_mask, split))

    def _all_layers(self, x: Tensor, split: int, key_mask: Tensor | None) -> Tensor:
        for layer in self.encoder.layers:
            x = layer(x, split, key_mask)
        return self.encoder.layer_norm(x, split)

    def unimodal_sequence(
        self, image: Tensor | None = None, text_ids: Tensor | None = None, text_pad_mask: Tensor | None = None
    ) -> Tensor:
        """BEiT-3's dual-encoder mode (its retrieval fine-tuning, VLMo's): the image alone through the vision
        expert, or the text alone through the language expert, every layer and the final LayerNorm. Returns
        the (B, n+1, d) vision sequence for `image`, else the (B, L, d) text sequence; index 0 is its CLS."""
        if image is not None:
            x, split, key_mask = self._embed_image(image), self.num_vision_tokens, None
        else:
            x, split = self._embed_text(text_ids, text_pad_mask), 0
            key_mask = attention_mask_from_padding(text_pad_mask, 0)
        return self._all_layers(x, split, key_mask)

    def forward(self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor) -> EncoderFeatures:
        split = self.num_vision_tokens
        x = self.embed(image, text_ids, text_pad_mask)
        key_mask = attention_mask_from_padding(text_pad_mask, split)
        visual, text, cls = [], [], []
        for j, layer in enumerate(self.encoder.layers, start=1):
            if self.keeping_attention:  # the joint softmax: text tokens' weights on the patches
                probs = layer.self_attn.probs(layer.self_attn_layer_norm(x, split), split, key_mask)
                self._keep(f"encoder layer {j}", probs, slice(1, split), slice(split, None), (self.grid, self.grid))
            x = layer(x, split, key_mask)
            if j in self.out_indices:
                h = self.encoder.layer_norm(x, split) if j == self.depth else x
                visual.append(tokens_to_map(h[:, 1:split], (self.grid, self.grid)))
                cls.append(h[:, 0])
                text.append(h[:, split:])
            if j == self.out_indices[-1]:
                break  # later layers feed nothing
        return EncoderFeatures(visual=visual, text=text, text_pad_mask=text_pad_mask, visual_cls=cls)
