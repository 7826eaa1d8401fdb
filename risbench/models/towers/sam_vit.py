"""SAM's ViT image encoder (ViT-B/L/H) as a vision tower (RISAM's backbone), from transformers' SAM classes.

Built from `SamVisionConfig` / `SamVisionEncoder` (no hub): windowed attention (14 x 14) with a few global
blocks, decomposed relative positions, an absolute position table for the 1024 px input. Weights only from
the official `sam_vit_{b,l,h}_*.pth` (converted on load, sam_convert.py; prompt encoder, mask decoder and
neck keys are dropped and listed). The outputs are block outputs *before* the neck, at full width.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.models.interfaces import VisionTower
from risbench.models.towers.common import check_keys, read_state_dict
from risbench.models.towers.sam_convert import convert_sam_image_encoder
from risbench.registry import VISION_TOWERS

logger = logging.getLogger(__name__)

# hidden, depth, heads, global-attention block indices, window (segment-anything build_sam.py);
# "tiny-test" is ours, for CPU tests (window 3 on a 4 x 4 grid exercises the window padding)
SIZES: dict[str, tuple[int, int, int, tuple[int, ...], int]] = {
    "tiny-test": (32, 8, 2, (1, 3, 5, 7), 3),
    "base": (768, 12, 12, (2, 5, 8, 11), 14),
    "large": (1024, 24, 16, (5, 11, 17, 23), 14),
    "huge": (1280, 32, 16, (7, 15, 23, 31), 14),
}
SAM_MEAN = (0.485, 0.456, 0.406)  # SAM's pixel_mean [123.675, 116.28, 103.53] / 255
SAM_STD = (0.229, 0.224, 0.225)  # SAM's pixel_std [58.395, 57.12, 57.375] / 255


@dataclass
class SamVitConfig:
    """Options of the SAM ViT vision tower."""

    size: str = "huge"  # tiny-test | base | large | huge
    image_size: int = 1024  # SAM's input (long side resized to 1024, padded); the position tables fit it
    patch_size: int = 16
    weights: str | None = None  # official sam_vit_{b,l,h}_*.pth; None = random init
    # 0-based blocks returned, in order; None = the 2nd, 3rd and 4th global-attention blocks (RISAM)
    out_layers: tuple[int, ...] | None = None
    attn_implementation: str = "sdpa"  # transformers attention: sdpa (counted by our fvcore handle) | eager
    init_std: float = 0.02  # random init (SamVisionConfig's own default, 1e-10, makes every weight ~0)


@VISION_TOWERS.register("sam_vit", config=SamVitConfig)
class SamVitTower(VisionTower):
    """forward(image (B,3,S,S), context, context pad mask (both unused)) -> the outputs of blocks `out_layers`
    as (B, D, S/16, S/16) maps (RISAM: F_v1, F_v2, F_v3 = global blocks 2-4, e.g. ViT-H blocks 15, 23, 31).

    Blocks after the last returned one are not run. Drop path 0 (SAM has none)."""

    tiny_options: ClassVar[dict[str, Any]] = {"size": "tiny-test", "image_size": 64}

    def __init__(self, cfg: SamVitConfig, context_dim: int = 0) -> None:
        super().__init__()
        from transformers import SamVisionConfig
        from transformers.models.sam.modeling_sam import SamVisionEncoder

        if cfg.size not in SIZES:
            raise RisbenchError(f"vision tower sam_vit: unknown size '{cfg.size}'; known: {', '.join(SIZES)}")
        if cfg.image_size % cfg.patch_size:
            raise RisbenchError(f"vision tower sam_vit: image_size {cfg.image_size} not a multiple of {cfg.patch_size}")
        hidden, depth, heads, global_idx, window = SIZES[cfg.size]
        out_layers = tuple(global_idx[1:]) if cfg.out_layers is None else tuple(cfg.out_layers)
        if not out_layers or any(not 0 <= i < depth for i in out_layers) or list(out_layers) != sorted(set(out_layers)):
            raise RisbenchError(f"vision tower sam_vit: out_layers {list(out_layers)} must increase in 0..{depth - 1}")
        self.cfg = cfg
        self.out_layers = out_layers
        hf_cfg = SamVisionConfig(
            hidden_size=hidden,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            mlp_dim=4 * hidden,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            window_size=window,
            global_attn_indexes=list(global_idx),
            qkv_bias=True,
            use_abs_pos=True,
            use_rel_pos=True,
            layer_norm_eps=1e-6,
            hidden_act="gelu",
            initializer_range=cfg.init_std,
            attn_implementation=cfg.attn_implementation,
        )
        self.model = SamVisionEncoder(hf_cfg)
        self.model.neck = nn.Identity()  # RISAM reads the blocks before the neck; the neck is not held
        self.image_size = cfg.image_size
        self.grid = cfg.image_size // cfg.patch_size
        self.out_dims = (hidden,) * len(out_layers)
        self.out_strides = (cfg.patch_size,) * len(out_layers)
        self.traits = frozenset({"single_scale"})
        self.weights = "random"
        self.ignored_keys = ""
        if cfg.weights is not None:
            self.load_official(cfg.weights)
            self.weights = cfg.weights

    def load_official(self, path: str) -> None:
        """Load an official SAM .pth strictly: every image-encoder key of ours, nothing left over except the
        neck, prompt encoder and mask decoder (listed in `ignored_keys` and the log)."""
        keys = convert_sam_image_encoder(read_state_dict(path, "vision tower sam_vit"))
        check_keys(keys.tensors, self.model.state_dict(), "vision tower sam_vit", path)
        self.model.load_state_dict(keys.tensors)
        self.ignored_keys = keys.ignored_summary()
        logger.info("sam_vit: loaded %d tensors from %s; ignored %s", len(keys.tensors), path, self.ignored_keys)

    def forward(
        self, image: Tensor, context: Tensor | None = None, context_pad_mask: Tensor | None = None
    ) -> list[Tensor]:
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise RisbenchError(
                f"vision tower sam_vit: expected {self.image_size}x{self.image_size} images, got "
                f"{tuple(image.shape[-2:])}; set image_size"
            )
        x = self.model.patch_embed(image) + self.model.pos_embed  # (B, H, W, D)
        outs = []
        for i, layer in enumerate(self.model.layers[: self.out_layers[-1] + 1]):
            x = layer(x)
            if i in self.out_layers:
                outs.append(x.permute(0, 3, 1, 2))
        return outs
