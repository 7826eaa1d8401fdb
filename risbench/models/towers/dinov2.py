"""DINOv2 ViT with 4 register tokens as a vision tower (DETRIS's backbone), from transformers model classes.

Built from `Dinov2WithRegistersConfig` (no hub); weights only from the official `.pth` (converted on load,
dinov2_convert.py). The position table is sized for the input grid (448 px, patch 14: 32 x 32)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.models.interfaces import VisionTower
from risbench.models.towers.common import build_adapters, check_keys, read_state_dict
from risbench.models.towers.dinov2_convert import convert_dinov2, to_official_dinov2
from risbench.registry import VISION_TOWERS

logger = logging.getLogger(__name__)

# hidden, layers, heads (facebookresearch/dinov2 vit_base / vit_large); "tiny-test" (CPU tests) and "tiny"
# (the CPU-scale detris-tiny preset, ViT-Ti's width at 4 blocks) are ours
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny-test": (32, 2, 2),
    "tiny": (192, 4, 3),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
NUM_REGISTERS = 4


@dataclass
class Dinov2RegConfig:
    """Options of the DINOv2-with-registers vision tower."""

    size: str = "base"  # tiny-test | tiny | base | large
    image_size: int = 448  # DETRIS: 448 -> a 32 x 32 grid
    patch_size: int = 14
    weights: str | None = None  # official dinov2_vit{b,l}14_reg4_pretrain.pth; None = random init
    out_layers: tuple[int, ...] = (4, 8)  # 0-based blocks returned, then the final normed output (DETRIS-B)
    adapters: list[dict[str, Any]] = field(default_factory=list)  # [{name, layers, ...}] (risbench.models.adapters)
    attn_implementation: str = "sdpa"  # transformers attention: sdpa (counted by our fvcore handle) | eager


@VISION_TOWERS.register("dinov2_reg", config=Dinov2RegConfig)
class Dinov2RegTower(VisionTower):
    """forward(image (B,3,S,S), context words or None, their pad mask) -> the outputs of blocks `out_layers`
    and the final LayerNorm output, CLS and registers dropped, as (B, D, S/14, S/14) maps (DETRIS's Fusion).

    Blocks run here, not in transformers' forward, so that adapters join the FFN branch:
    x = x + ls1(attn(norm1 x)); x = x + ls2(mlp(norm2 x) + scale * adapter(norm2 x, words)). Drop path 0,
    as DETRIS runs it. Every adapter of a block gets the same `context` (DETRIS: the final CLIP words).
    """

    tiny_options: ClassVar[dict[str, Any]] = {"size": "tiny-test", "image_size": 56, "out_layers": (0, 1)}

    def __init__(self, cfg: Dinov2RegConfig, context_dim: int = 0) -> None:
        super().__init__()
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        if cfg.size not in SIZES:
            raise RisbenchError(f"vision tower dinov2_reg: unknown size '{cfg.size}'; known: {', '.join(SIZES)}")
        if cfg.image_size % cfg.patch_size:
            raise RisbenchError(
                f"vision tower dinov2_reg: image_size {cfg.image_size} not a multiple of {cfg.patch_size}"
            )
        hidden, depth, heads = SIZES[cfg.size]
        if any(not 0 <= i < depth for i in cfg.out_layers) or list(cfg.out_layers) != sorted(set(cfg.out_layers)):
            raise RisbenchError(
                f"vision tower dinov2_reg: out_layers {list(cfg.out_layers)} must increase in 0..{depth - 1}"
            )
        self.cfg = cfg
        hf_cfg = Dinov2WithRegistersConfig(
            hidden_size=hidden,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            mlp_ratio=4,
            patch_size=cfg.patch_size,
            image_size=cfg.image_size,
            num_register_tokens=NUM_REGISTERS,
            layerscale_value=1.0,
            layer_norm_eps=1e-6,
            qkv_bias=True,
            drop_path_rate=0.0,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation=cfg.attn_implementation,
        )
        self.model = Dinov2WithRegistersModel(hf_cfg)
        self.adapters = build_adapters(cfg.adapters, hidden, depth, context_dim, "vision tower dinov2_reg")
        self.image_size = cfg.image_size
        self.grid = cfg.image_size // cfg.patch_size
        self.out_dims = (hidden,) * (len(cfg.out_layers) + 1)
        self.pooled_dim = hidden
        self.out_strides = (cfg.patch_size,) * (len(cfg.out_layers) + 1)
        self.traits = frozenset({"single_scale"})
        self.weights = "random"
        if cfg.weights is not None:
            self.load_official(cfg.weights)
            self.weights = cfg.weights

    def load_official(self, path: str) -> None:
        """Load an official DINOv2 .pth strictly (every tower key, no key left over; adapters not in it)."""
        converted = convert_dinov2(read_state_dict(path, "vision tower dinov2_reg"), self.grid)
        check_keys(converted, self.model.state_dict(), "vision tower dinov2_reg", path)
        self.model.load_state_dict(converted)
        logger.info("dinov2_reg: loaded %d tensors from %s", len(converted), path)

    def forward(
        self, image: Tensor, context: Tensor | None = None, context_pad_mask: Tensor | None = None
    ) -> list[Tensor]:
        outs = self.tokens(image, context, context_pad_mask)
        b, g, prefix = image.shape[0], self.grid, 1 + NUM_REGISTERS
        return [o[:, prefix:].transpose(1, 2).reshape(b, -1, g, g) for o in outs]

    def tokens(
        self, image: Tensor, context: Tensor | None = None, context_pad_mask: Tensor | None = None
    ) -> list[Tensor]:
        """The full token sequences (CLS, 4 registers, patches) of blocks `out_layers`, then of the final
        LayerNorm output: what `forward` turns into maps."""
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise RisbenchError(
                f"vision tower dinov2_reg: expected {self.image_size}x{self.image_size} images, got "
                f"{tuple(image.shape[-2:])}; set image_size"
            )
        x = self.model.embeddings(image)  # CLS, 4 registers, patches (the table already fits the grid)
        prefix = 1 + NUM_REGISTERS
        outs = []
        for i, layer in enumerate(self.model.encoder.layer):
            x = self._block(i, layer, x, prefix, context, context_pad_mask)
            if i in self.cfg.out_layers:
                outs.append(x)
        outs.append(self.model.layernorm(x))
        return outs

    def pooled(self, image: Tensor) -> Tensor:
        """(B, D): the CLS token of the final normed output (DINOv2's `x_norm_clstoken`), no text context;
        the image vector of contrastive pretraining (objective dual_contrastive)."""
        return self.tokens(image)[-1][:, 0]

    def official_state_dict(self) -> dict[str, Tensor]:
        """The tower's weights (no adapters) in the official dinov2 key layout that `weights=` loads."""
        return to_official_dinov2({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})

    def _block(self, i: int, layer: nn.Module, x: Tensor, prefix: int, context, context_pad_mask) -> Tensor:
        x = x + layer.layer_scale1(layer.attention(layer.norm1(x))[0])
        h = layer.norm2(x)
        f = layer.mlp(h)
        adapter = self.adapters[str(i)] if str(i) in self.adapters else None
        if adapter is not None:
            src = h if adapter.reads == "ffn_input" else x
            f = f + adapter.scale * adapter(src, prefix, (self.grid, self.grid), context, context_pad_mask)
        return x + layer.layer_scale2(f)
