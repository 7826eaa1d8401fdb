"""Swin + BERT dual encoder (LAVT / CGFormer / DMMI's backbone), from `transformers` model classes.

Built from configs only (no hub): Swin from `SwinConfig` -> `SwinModel`, BERT from `BertConfig` ->
`BertModel`. `transformers` is imported when the encoder is built, never at `import risbench`.
Weights come only from local files: an official Swin `.pth` (converted on load, see swin_convert.py)
and a local BERT directory (config.json + pytorch_model.bin / model.safetensors, read offline).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from risbench.errors import RisbenchError
from risbench.models.encoders.swin_convert import SwinLoadReport, convert_swin_state_dict, read_swin_checkpoint
from risbench.models.interfaces import Encoder, EncoderFeatures, FeatureSpec
from risbench.models.stage_fusion.base import StageFusionHook, StageInfo
from risbench.registry import ENCODERS

logger = logging.getLogger(__name__)

# Swin: embed_dim, depths, heads (LAVT-RIS lib/segmentation.py; Swin-Transformer configs).
# BERT: hidden, layers, heads, FFN (bert-base-uncased). "tiny-test" is ours, for CPU tests.
SWIN_SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "tiny-test": (32, (1, 1, 1, 1), (2, 4, 8, 16)),
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
BERT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny-test": (64, 2, 2, 128),
}
BERT_BASE = (768, 12, 12, 3072)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class SwinBertConfig:
    """Options of the Swin + BERT dual encoder."""

    size: str = "base"  # tiny-test | tiny | small | base | large (Swin size; BERT is base except tiny-test)
    image_size: int = 480
    patch_size: int = 4
    window_size: int = 12  # LAVT / CGFormer / DMMI: 12 (the *_window12_384_22k checkpoints)
    swin_weights: str | None = None  # official Swin .pth ({"model": sd}); None = random init
    bert_path: str | None = None  # local BERT directory (config.json + weights); None = random init
    freeze_text: bool = False  # BERT frozen (no grad, kept in eval mode)
    out_indices: tuple[int, ...] = (1, 2, 3, 4)  # 1-based Swin stages returned (strides 4, 8, 16, 32)
    vocab_size: int = 30522  # BERT vocabulary when built from a config (bert_path's config wins)
    max_text_len: int = 20  # padded expression length the compared methods use (LAVT/CGFormer: 20)
    drop_path: float = 0.3  # Swin stochastic depth, linear over blocks (LAVT: 0.3)
    attn_implementation: str = "sdpa"  # transformers attention: sdpa (counted by our fvcore handle) | eager
    # custom widths (null = the size's): the CPU-scale dual encoder is matched to a tiny BEiT-3's parameters
    swin_embed_dim: int | None = None  # stage-1 width (stage s: embed * 2^(s-1))
    swin_depths: tuple[int, ...] | None = None  # blocks per stage (its length = the number of stages)
    swin_heads: tuple[int, ...] | None = None  # heads per stage
    bert_hidden: int | None = None  # BERT width, layers, heads and FFN when built from a config
    bert_layers: int | None = None  #   (a bert_path's config.json wins over all four)
    bert_heads: int | None = None
    bert_ffn: int | None = None
    # early fusion inside Swin: {name: pwam | dmmi | vltf, stages: [...], ...} (risbench/models/stage_fusion/);
    # null = none (Swin sees only the image, any fusion runs after the encoder)
    stage_fusion: dict[str, Any] | None = None
    out_norm: bool = True  # a LayerNorm per returned stage (LAVT / DMMI's norm{i}); RefSegformer has none
    # parameter-name globs (relative to the encoder) kept frozen; RefSegformer's optimizer holds only BERT layers
    # 0-9: [text_encoder.embeddings.*, text_encoder.encoder.layer.10.*, text_encoder.encoder.layer.11.*]
    freeze: tuple[str, ...] = ()


def _swin_dims(cfg: SwinBertConfig) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    if cfg.size not in SWIN_SIZES:
        raise RisbenchError(f"encoder swin_bert: unknown size '{cfg.size}'; known: {', '.join(SWIN_SIZES)}")
    if cfg.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise RisbenchError(
            f"encoder swin_bert: attn_implementation '{cfg.attn_implementation}' is not one of "
            f"{', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    embed, depths, heads = SWIN_SIZES[cfg.size]
    embed = cfg.swin_embed_dim if cfg.swin_embed_dim is not None else embed
    depths = tuple(cfg.swin_depths) if cfg.swin_depths is not None else depths
    heads = tuple(cfg.swin_heads) if cfg.swin_heads is not None else heads
    if len(heads) != len(depths) or not depths or min(depths) < 1 or embed < 1:
        raise RisbenchError(
            f"encoder swin_bert: swin_depths {list(depths)} and swin_heads {list(heads)} need one entry (>= 1) "
            "per stage"
        )
    bad = [h for i, h in enumerate(heads) if h < 1 or (embed * 2**i) % h]
    if bad:
        raise RisbenchError(
            f"encoder swin_bert: swin_heads {list(heads)} must divide the stage widths of embed {embed}"
        )
    n = len(depths)
    idx = tuple(cfg.out_indices)
    if not idx or any(s < 1 or s > n for s in idx) or list(idx) != sorted(set(idx)):
        raise RisbenchError(f"encoder swin_bert: out_indices {list(idx)} must be increasing stage numbers in 1..{n}")
    step = cfg.patch_size * 2 ** (n - 1)
    if cfg.image_size % step:
        raise RisbenchError(
            f"encoder swin_bert: image_size {cfg.image_size} must be a multiple of {step} "
            f"(patch {cfg.patch_size} x 2^{n - 1} merges)"
        )
    return embed, depths, heads


def bert_dims(cfg: SwinBertConfig) -> tuple[int, int, int, int]:
    """(hidden, layers, heads, FFN) of a BERT built from a config: the size's, with the bert_* options."""
    dims = BERT_SIZES.get(cfg.size, BERT_BASE)
    given = (cfg.bert_hidden, cfg.bert_layers, cfg.bert_heads, cfg.bert_ffn)
    hidden, layers, heads, ffn = (d if g is None else g for d, g in zip(dims, given, strict=True))
    if min(hidden, layers, heads, ffn) < 1 or hidden % heads:
        raise RisbenchError(
            f"encoder swin_bert: BERT hidden {hidden}, layers {layers}, heads {heads}, FFN {ffn}: all >= 1 and "
            "heads dividing hidden"
        )
    return hidden, layers, heads, ffn


@ENCODERS.register("swin_bert", config=SwinBertConfig)
class SwinBertEncoder(Encoder):
    """Swin (4-stage pyramid) + BERT dual encoder, as in LAVT / CGFormer / DMMI (Swin-B w12 + BERT-base).

    forward(image (B,3,S,S), text_ids (B,L) WordPiece ids framed [CLS] ... [SEP] [PAD]..., text_pad_mask
    (B,L) True=pad) -> EncoderFeatures with, per stage s in `out_indices`: the Swin stage output *before*
    its patch merging (LAVT's `x_out`), passed through a per-stage LayerNorm (LAVT's `norm{i}`, fresh
    init), as a (B, C_s, S/(4*2^(s-1)), ...) map (Swin-B: 128/256/512/1024 at strides 4/8/16/32); the
    BERT last hidden state (B, L, 768), the same tensor for every stage; visual_cls None.

    `stage_fusion` puts a fusion module after the blocks of chosen Swin stages (before their patch merging;
    risbench/models/stage_fusion/): BERT runs first, each fused stage's module reads the visual tokens and the
    words, its output continues into the next stage, the encoder returns for that stage what the module says
    (LAVT / DMMI: the fusion output F; RefSegformer: the VLTF output alone), and the text of stage s is the
    words after stage s (DMMI updates them). `memory` carries a module's sentence tokens (VLTF's [blank;
    memory]), and the trait `stage_memory` says so. Without `stage_fusion` (the default, described next):

    Fusion is NOT inside this encoder. LAVT, CGFormer and DMMI run a PWAM (+ language gate) after the
    blocks of every Swin stage and feed the gated sum x + g * F into the next stage, so language changes
    the visual features of all later stages (DMMI's bidirectional variant also updates the words). Here
    the Swin stages see only the image; the `pwam` FPN applies PWAM per stage to these outputs afterwards
    (post-hoc fusion) and exposes the fused pyramid. The operations and parameters per stage are the
    same, the data flow differs: our stage s+1 never sees stage s's language-gated features. This is the
    adaptation the Shared-RIS paper makes for its Table IV ("LAVT PWAM" as an FPN on a finished encoder).
    One more placement detail: LAVT's per-stage `norm{i}` normalises the PWAM output F_i that goes to the
    decoder; ours normalises the Swin stage output (as a plain Swin backbone, e.g. transformers'
    SwinBackbone, does), before any FPN. Same parameters (one LayerNorm per stage), different input.

    Attention: built with `attn_implementation="sdpa"` by default; under torch.jit.trace both Swin's
    window attention (relative-position bias + shift mask as a float attn_mask) and BERT's self-attention
    appear as `aten::scaled_dot_product_attention`, which risbench.flops counts with its SDPA handle
    (2 batched matmuls, exactly what `eager`'s explicit matmuls give; `eager` is the fallback for a
    counter without the handle).

    Swin runs with `always_partition=True`: every block keeps window `window_size` and the shift
    window//2, padding a grid smaller than the window, as LAVT's Swin (Swin-Transformer-Semantic-
    Segmentation) does; at 480 (grids 120/60/30/15, window 12) no clamping question arises anyway.
    The final Swin `norm` and BERT's pooler are not built (neither is used by these methods' forward;
    their checkpoint keys are reported as ignored).
    """

    tiny_options: ClassVar[dict[str, Any]] = {
        "size": "tiny-test",
        "image_size": 64,
        "window_size": 4,
        "vocab_size": 100,
    }

    tokenizer_family = "wordpiece"
    pretrain_objective = "dual_unimodal"  # unimodal: SimMIM on Swin, masked LM on BERT (swin_bert_pretrain.py)
    pixel_mean = (0.485, 0.456, 0.406)
    pixel_std = (0.229, 0.224, 0.225)

    def __init__(self, cfg: SwinBertConfig) -> None:
        super().__init__()
        from transformers import SwinConfig, SwinModel  # heavy import, at build time only

        embed, depths, heads = _swin_dims(cfg)
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.out_indices = tuple(cfg.out_indices)
        self.num_stages = len(depths)
        swin_cfg = SwinConfig(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_channels=3,
            embed_dim=embed,
            depths=list(depths),
            num_heads=list(heads),
            window_size=cfg.window_size,
            mlp_ratio=4.0,
            qkv_bias=True,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            drop_path_rate=cfg.drop_path,
            hidden_act="gelu",
            use_absolute_embeddings=False,
            layer_norm_eps=1e-5,
            attn_implementation=cfg.attn_implementation,
        )
        self.swin = SwinModel(swin_cfg, add_pooling_layer=False)
        self.swin.layernorm = nn.Identity()  # the final norm is unused: per-stage out_norms instead (LAVT)
        dims = [embed * 2**i for i in range(self.num_stages)]
        if cfg.out_norm:
            self.out_norms = nn.ModuleDict({str(s - 1): nn.LayerNorm(dims[s - 1]) for s in self.out_indices})

        self.text_encoder, self.bert_report = self._build_bert(cfg)
        self.text_dim = self.text_encoder.config.hidden_size
        self.vocab_size = self.text_encoder.config.vocab_size
        self.max_text_positions = self.text_encoder.config.max_position_embeddings
        if cfg.max_text_len > self.max_text_positions:
            raise RisbenchError(
                f"encoder swin_bert: max_text_len {cfg.max_text_len} exceeds BERT's "
                f"max_position_embeddings {self.max_text_positions}"
            )
        self.tokenizer_path = cfg.bert_path  # the WordPiece vocab.txt lives next to the BERT weights
        if cfg.freeze_text:
            self.text_encoder.requires_grad_(False)
            self.text_encoder.eval()

        self.stage_fusion: StageFusionHook | None = None
        traits = {"multi_scale", "text_tokens"}
        memory_stages: list[int] = []
        if cfg.stage_fusion is not None:
            infos = [StageInfo(i + 1, dims[i], heads[i], self.text_dim) for i in range(self.num_stages)]
            self.stage_fusion = StageFusionHook(cfg.stage_fusion, infos)
            memory_stages = [int(s) for s, m in self.stage_fusion.fusions.items() if getattr(m, "gives_memory", False)]
            if memory_stages:
                traits.add("stage_memory")
        self._apply_freeze(cfg.freeze)
        mem_outs = self.out_indices if memory_stages else ()  # memory widths / Swin heads per output stage
        self.out_spec = FeatureSpec(
            visual_dims=tuple(dims[s - 1] for s in self.out_indices),
            visual_strides=tuple(cfg.patch_size * 2 ** (s - 1) for s in self.out_indices),
            text_dim=self.text_dim,
            traits=frozenset(traits),
            memory_dims=tuple(dims[s - 1] if s in memory_stages else 0 for s in mem_outs),
            memory_heads=tuple(heads[s - 1] if s in memory_stages else 0 for s in mem_outs),
        )

        self.swin_report: SwinLoadReport | None = None
        if cfg.swin_weights is not None:
            self.swin_report = self.load_swin_weights(cfg.swin_weights)
            logger.info(self.swin_report.summary())
        if cfg.swin_weights is None and cfg.bert_path is None:
            logger.warning("swin_bert: no weights given, random init")
            self.weights = "random"
        else:
            self.weights = f"swin={cfg.swin_weights or 'random'},bert={cfg.bert_path or 'random'}"

    # -- construction helpers --------------------------------------------------------------------

    def _apply_freeze(self, globs: tuple[str, ...]) -> None:
        if not globs:
            return
        hit = [n for n, _ in self.named_parameters() if any(fnmatch.fnmatchcase(n, g) for g in globs)]
        if not hit:
            raise RisbenchError(
                f"encoder swin_bert: freeze {list(globs)} matches no parameter (names look like "
                "text_encoder.encoder.layer.10.output.dense.weight, swin.embeddings.patch_embeddings...)"
            )
        for name, p in self.named_parameters():
            if name in hit:
                p.requires_grad_(False)
        logger.info("swin_bert: %d parameter tensors frozen by %s", len(hit), list(globs))

    @staticmethod
    def _build_bert(cfg: SwinBertConfig) -> tuple[nn.Module, dict]:
        from transformers import BertConfig, BertModel

        if cfg.bert_path is None:
            hidden, layers, heads, ffn = bert_dims(cfg)
            bert_cfg = BertConfig(
                vocab_size=cfg.vocab_size,
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=ffn,
                attn_implementation=cfg.attn_implementation,
            )
            return BertModel(bert_cfg, add_pooling_layer=False), {}
        path = Path(cfg.bert_path)
        if not (path / "config.json").is_file():
            raise RisbenchError(f"encoder swin_bert: bert_path {path} is not a directory with a config.json")
        try:
            model, info = BertModel.from_pretrained(
                str(path),
                local_files_only=True,
                add_pooling_layer=False,
                attn_implementation=cfg.attn_implementation,
                output_loading_info=True,
            )
        except OSError as exc:
            raise RisbenchError(f"encoder swin_bert: cannot load BERT from {path}: {exc}") from None
        missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
        mismatched = info.get("mismatched_keys", [])
        if missing or mismatched:
            raise RisbenchError(
                f"encoder swin_bert: BERT weights in {path} do not fit: missing {sorted(missing)[:8]}, "
                f"shape mismatches {list(mismatched)[:4]}"
            )
        unexpected = sorted(info.get("unexpected_keys", []))
        if unexpected:
            logger.info("swin_bert: BERT keys ignored (pooler / pretraining heads): %s", unexpected[:8])
        if model.config.vocab_size != cfg.vocab_size:
            logger.info(
                "swin_bert: BERT vocab %d from %s replaces vocab_size %d", model.config.vocab_size, path, cfg.vocab_size
            )
        return model, {"path": str(path), "ignored": unexpected}

    def load_swin_weights(self, path: str | Path) -> SwinLoadReport:
        """Load an official Swin .pth into `self.swin` (+ `out_norms` if it carries LAVT's norm{i})."""
        source = read_swin_checkpoint(path)
        target = {k: v for k, v in self.state_dict().items() if not k.startswith("stage_fusion.")}
        converted, report = convert_swin_state_dict(
            source, target, self.cfg.window_size, swin_prefix="swin.", out_norm_prefix="out_norms.", path=str(path)
        )
        self.load_state_dict(converted, strict=False)
        return report

    # -- module API ------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> SwinBertEncoder:
        super().train(mode)
        if self.cfg.freeze_text:
            self.text_encoder.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        """Swin's relative-position tables (excluded from decay in the Swin recipe)."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def flop_parts(self) -> dict[str, str]:
        """Sub-modules reported on their own by `risbench flops` (only with a stage fusion; else one row)."""
        if self.stage_fusion is None:
            return {"encoder": ""}
        parts = {"swin": "swin", "stage fusion": "stage_fusion", "bert": "text_encoder"}
        if self.cfg.out_norm:
            parts["out norms"] = "out_norms"
        return parts

    def _norm(self, s: int, fmap: Tensor) -> Tensor:
        if not self.cfg.out_norm:
            return fmap
        return self.out_norms[str(s - 1)](fmap.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()

    def _words(self, text_ids: Tensor, text_pad_mask: Tensor) -> Tensor:
        attention_mask = (~text_pad_mask).long()
        if self.cfg.freeze_text:
            with torch.no_grad():
                return self.text_encoder(input_ids=text_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_encoder(input_ids=text_ids, attention_mask=attention_mask).last_hidden_state

    def _fused_forward(self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor) -> EncoderFeatures:
        """Swin stage by stage, the stage fusion after the blocks of each fused stage, before its patch merging."""
        words = self._words(text_ids, text_pad_mask)
        h, grid = self.swin.embeddings(image)
        visual, texts, memory = [], [], []
        for s, stage in enumerate(self.swin.encoder.layers, start=1):
            for block in stage.blocks:
                h = block(h, grid, always_partition=True)[0]
            fused = self.stage_fusion(s, h, grid, words, text_pad_mask)
            h, words = fused.visual, fused.words
            if s in self.out_indices:
                b, _, c = fused.out.shape
                fmap = fused.out.transpose(1, 2).reshape(b, c, grid[0], grid[1])
                visual.append(self._norm(s, fmap))
                texts.append(words)
                memory.append(fused.memory)
            if stage.downsample is not None:
                h = stage.downsample(h, grid)
                grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        return EncoderFeatures(visual=visual, text=texts, text_pad_mask=text_pad_mask, visual_cls=None, memory=memory)

    def forward(self, image: Tensor, text_ids: Tensor, text_pad_mask: Tensor) -> EncoderFeatures:
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise RisbenchError(
                f"encoder swin_bert: expected {self.image_size}x{self.image_size} images, got "
                f"{tuple(image.shape[-2:])}; set encoder.image_size"
            )
        if text_ids.shape[1] > self.max_text_positions:
            raise RisbenchError(
                f"encoder swin_bert: text length {text_ids.shape[1]} exceeds {self.max_text_positions} positions"
            )
        if self.stage_fusion is not None:
            return self._fused_forward(image, text_ids, text_pad_mask)
        emb, grid = self.swin.embeddings(image)
        out = self.swin.encoder(
            emb,
            grid,
            output_hidden_states=True,
            output_hidden_states_before_downsampling=True,
            always_partition=True,
        )
        stages = out.reshaped_hidden_states[1:]  # [0] is the patch embedding (stem)
        visual = []
        for s in self.out_indices:
            visual.append(self._norm(s, stages[s - 1]))  # (B, C, H, W), before this stage's patch merging
        words = self._words(text_ids, text_pad_mask)
        return EncoderFeatures(visual=visual, text=[words] * len(visual), text_pad_mask=text_pad_mask, visual_cls=None)
