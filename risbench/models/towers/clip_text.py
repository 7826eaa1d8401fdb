"""The CLIP text transformer as a text tower (DETRIS's text backbone, CLIP ViT-B/16's), from transformers.

Built from `CLIPTextConfig` (no hub). Weights: an OpenAI-layout state dict (`clip_state_dict`: a
weights-only .pt/.pth/.safetensors of ViT-B-16's tensors, or OpenAI's TorchScript `ViT-B-16.pt` itself, whose
tensors `risbench.torchscript` reads without running its code) or a local Hugging Face CLIP directory (`path`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.models.interfaces import TextTower
from risbench.models.towers.clip_convert import convert_hf_clip, convert_openai_clip, to_openai_clip
from risbench.models.towers.common import build_adapters, check_keys, read_state_dict
from risbench.registry import TEXT_TOWERS

logger = logging.getLogger(__name__)

# width, layers, heads, FFN, projection (CLIP ViT-B/16's text transformer); "tiny-test" (CPU tests) and "tiny"
# (the CPU-scale detris-tiny preset) are ours
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny-test": (32, 2, 2, 64, 32),
    "tiny": (128, 4, 4, 512, 128),
    "base": (512, 12, 8, 2048, 512),
}


@dataclass
class ClipTextConfig:
    """Options of the CLIP text tower."""

    size: str = "base"  # tiny-test | tiny | base
    vocab_size: int = 49408
    context_length: int = 77  # the position table (CLIP's); the first max_text_len rows are used
    max_text_len: int = 17  # DETRIS's word_len (with <|startoftext|> and <|endoftext|>)
    clip_state_dict: str | None = None  # OpenAI-layout weights (weights-only file); None = random init
    path: str | None = None  # a local Hugging Face CLIP directory (config.json + safetensors / bin)
    adapters: list[dict[str, Any]] = field(default_factory=list)
    attn_implementation: str = "sdpa"


@TEXT_TOWERS.register("clip_text", config=ClipTextConfig)
class ClipTextTower(TextTower):
    """forward(ids (B, L), pad mask (B, L) True = pad) -> (words = final-LN states (B, L, 512), sentence =
    projection of the <|endoftext|> state (B, 512)), causal self-attention as in CLIP.

    Blocks run here: x = x + attn(ln1 x); x = x + mlp(ln2 x) + scale * adapter(x) (DETRIS's block: the
    adapter reads the post-attention residual stream). The EOT position is the last unpadded token
    (DETRIS's `argmax` of the ids finds the same one, the EOT id being CLIP's largest).
    """

    tokenizer_family = "clip_bpe"
    tiny_options: ClassVar[dict[str, Any]] = {"size": "tiny-test", "vocab_size": 100, "context_length": 20}

    def __init__(self, cfg: ClipTextConfig) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        if cfg.size not in SIZES:
            raise RisbenchError(f"text tower clip_text: unknown size '{cfg.size}'; known: {', '.join(SIZES)}")
        if cfg.max_text_len > cfg.context_length:
            raise RisbenchError(f"text tower clip_text: max_text_len {cfg.max_text_len} > context_length")
        width, depth, heads, ffn, proj = SIZES[cfg.size]
        self.cfg = cfg
        hf_cfg = CLIPTextConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=width,
            intermediate_size=ffn,
            projection_dim=proj,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            max_position_embeddings=cfg.context_length,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            attention_dropout=0.0,
            bos_token_id=min(49406, cfg.vocab_size - 2),
            eos_token_id=min(49407, cfg.vocab_size - 1),
            pad_token_id=0,
            attn_implementation=cfg.attn_implementation,
        )
        self.model = CLIPTextModel(hf_cfg)
        self.projection = nn.Linear(width, proj, bias=False)  # CLIP's text_projection (x @ P = Linear with P^T)
        nn.init.normal_(self.projection.weight, std=width**-0.5)
        self.adapters = build_adapters(cfg.adapters, width, depth, 0, "text tower clip_text")
        self.dim, self.sentence_dim, self.vocab_size = width, proj, cfg.vocab_size
        self.max_text_len = cfg.max_text_len
        self.weights = "random"
        if cfg.clip_state_dict is not None and cfg.path is not None:
            raise RisbenchError("text tower clip_text: give clip_state_dict or path, not both")
        if cfg.clip_state_dict is not None:
            sd = read_state_dict(cfg.clip_state_dict, "text tower clip_text")
            self.load_converted(convert_openai_clip(sd), cfg.clip_state_dict)
        elif cfg.path is not None:
            self.load_converted(convert_hf_clip(_read_hf_dir(Path(cfg.path))), cfg.path)

    def tower_state_dict(self) -> dict[str, Tensor]:
        """The tower's own tensors (no adapters), the keys the converters produce."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("adapters.")}

    def official_state_dict(self) -> dict[str, Tensor]:
        """The tower's weights (no adapters) in OpenAI's CLIP layout, the one `clip_state_dict=` loads."""
        return to_openai_clip({k: v.detach().cpu().clone() for k, v in self.tower_state_dict().items()})

    def load_converted(self, converted: dict[str, Tensor], source: str) -> None:
        check_keys(converted, self.tower_state_dict(), "text tower clip_text", source)
        self.load_state_dict(converted, strict=False)
        self.weights = source
        logger.info("clip_text: loaded %d tensors from %s", len(converted), source)

    def forward(self, text_ids: Tensor, text_pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        b, n = text_ids.shape
        if n > self.cfg.context_length:
            raise RisbenchError(f"text tower clip_text: {n} tokens exceed the {self.cfg.context_length} positions")
        emb = self.model.embeddings
        x = emb.token_embedding(text_ids) + emb.position_embedding.weight[:n]
        causal = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu(1)[None, None]
        for i, layer in enumerate(self.model.encoder.layers):
            x = x + layer.self_attn(layer.layer_norm1(x), attention_mask=causal)[0]
            f = layer.mlp(layer.layer_norm2(x))
            if str(i) in self.adapters:
                adapter = self.adapters[str(i)]
                src = x if adapter.reads == "residual" else layer.layer_norm2(x)
                f = f + adapter.scale * adapter(src, 1, None, None, text_pad_mask)
            x = x + f
        words = self.model.final_layer_norm(x)
        eot = (~text_pad_mask).sum(1).clamp(min=1) - 1
        sentence = self.projection(words[torch.arange(b, device=words.device), eot])
        return words, sentence


def _read_hf_dir(path: Path) -> dict[str, Tensor]:
    """The tensors of a local Hugging Face CLIP (or CLIP text) directory, read offline and weights-only."""
    if not (path / "config.json").is_file():
        raise RisbenchError(f"text tower clip_text: {path} is not a directory with a config.json")
    json.loads((path / "config.json").read_text())  # a readable config, or a clear error below
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return read_state_dict(path / name, "text tower clip_text")
    raise RisbenchError(f"text tower clip_text: {path} has no model.safetensors or pytorch_model.bin")
