"""`dual_unimodal`: unimodal pretraining of the Swin + BERT dual encoder, at small scale (`risbench pretrain`).

The dual encoders of LAVT / CGFormer / DMMI start from towers pretrained apart: Swin on images alone,
BERT on text alone, and neither ever sees the other modality before fine-tuning. This objective does the
same on the pretraining data, each tower with its own family's objective (docs/decisions.md §9):
- vision, SimMIM (Xie et al. 2022): the image is cut into `mask_patch_size` px squares and
  `image_mask_ratio` of them (SimMIM: 0.6) replace their patch embeddings (after the patch-embedding
  norm) by a learned `mask_token`; Swin runs on the result; a linear decoder (SimMIM's 1x1 conv to
  stride^2 x 3 channels + pixel shuffle) turns the last stage's map back into pixels, and the loss
  (L1, SimMIM's; or MSE) is taken on the masked pixels only. Targets are the input pixels (as the
  encoder sees them), normalised per mask square when `norm_target` (MAE's per-patch normalisation).
- text, BERT's masked language modelling on the expressions / captions alone: `text_mask_ratio` of
  each text's word tokens (at least one; [CLS], [SEP] and padding never) are chosen; of those 80%
  become [MASK], 10% a random id, 10% stay, and BERT's prediction head (dense + GELU + LayerNorm, the
  decoder tied to the word embeddings) predicts the original ids from the final hidden states.
No cross-modal signal: the image loss reads only the image, the text loss only the text (no fusion
module exists inside the encoder; PWAM and the like are FPNs, built only for fine-tuning).
The loss is `image_loss_weight * L_mim + text_loss_weight * L_mlm`.

The export is each tower in its official layout: `swin.pth` = {"model": official Swin keys (+ LAVT's
`norm{k}` for the per-stage norms, SimMIM's `mask_token` and `decoder.0.*` beside them)}, loaded with
`encoder.swin_weights=`; `bert/` = a Hugging Face BERT folder (config.json + model.safetensors with
`bert.*` and the MLM head `cls.predictions.*`, as bert-base-uncased ships), loaded with
`encoder.bert_path=`. The heads are reported as ignored when fine-tuning loads them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.encoders.masking import choose_masked, patchify
from risbench.models.encoders.swin_bert import SwinBertEncoder
from risbench.models.encoders.swin_convert import to_official_swin_state_dict
from risbench.models.interfaces import PretrainObjective
from risbench.registry import OBJECTIVES

SWIN_FILE = "swin.pth"
BERT_DIR = "bert"
BERT_WEIGHTS = "model.safetensors"
IMAGE_LOSSES = ("l1", "mse")


@dataclass
class DualUnimodalConfig:
    """Options of the dual encoder's unimodal pretraining (SimMIM for Swin, MLM for BERT)."""

    image_mask_ratio: float = 0.6  # share of the mask squares masked (SimMIM: 0.6)
    mask_patch_size: int = 16  # side of a mask square in px (SimMIM: 32 at 192 px; a multiple of the patch)
    image_loss: str = "l1"  # l1 (SimMIM) | mse
    norm_target: bool = True  # targets normalised per mask square (MAE); false = the input pixels as they are
    text_mask_ratio: float = 0.15  # share of each text's word tokens chosen (BERT: 15%)
    mask_token_prob: float = 0.8  # of the chosen: -> [MASK]; then `random_token_prob` -> a random id; the rest stay
    random_token_prob: float = 0.1
    image_loss_weight: float = 1.0
    text_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.image_mask_ratio < 1.0:
            raise ValueError(f"image_mask_ratio must be in (0, 1), got {self.image_mask_ratio}")
        if not 0.0 < self.text_mask_ratio <= 1.0:
            raise ValueError(f"text_mask_ratio must be in (0, 1], got {self.text_mask_ratio}")
        if self.image_loss not in IMAGE_LOSSES:
            raise ValueError(f"image_loss must be one of {', '.join(IMAGE_LOSSES)}, got '{self.image_loss}'")
        if self.mask_patch_size < 1:
            raise ValueError(f"mask_patch_size must be >= 1, got {self.mask_patch_size}")
        probs = (self.mask_token_prob, self.random_token_prob)
        if min(probs) < 0 or sum(probs) > 1:
            raise ValueError(f"mask_token_prob and random_token_prob must be >= 0 with a sum <= 1, got {probs}")
        weights = (self.image_loss_weight, self.text_loss_weight)
        if min(weights) < 0 or sum(weights) == 0:
            raise ValueError("image_loss_weight and text_loss_weight must be >= 0, not both 0")


def bert_mlm_inputs(
    ids: Tensor, words: Tensor, cfg: DualUnimodalConfig, mask_id: int, vocab: int
) -> tuple[Tensor, Tensor]:
    """BERT's masking: (corrupted ids, chosen (B, L) bool). `text_mask_ratio` of each row's `words` are
    chosen (at least one where a row has any); each chosen one becomes `mask_id` with probability
    `mask_token_prob`, a uniform id in [0, vocab) with `random_token_prob`, else stays."""
    chosen = choose_masked(words, cfg.text_mask_ratio)
    draw = torch.rand(ids.shape, device=ids.device)
    to_mask = chosen & (draw < cfg.mask_token_prob)
    to_random = chosen & (draw >= cfg.mask_token_prob) & (draw < cfg.mask_token_prob + cfg.random_token_prob)
    random_ids = torch.randint(0, vocab, ids.shape, device=ids.device)
    out = ids.masked_fill(to_mask, mask_id)
    return torch.where(to_random, random_ids, out), chosen


class BertMLMHead(nn.Module):
    """BERT's `cls.predictions`: dense + GELU + LayerNorm, then the word embeddings (tied) + a bias."""

    def __init__(self, hidden: int, vocab: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815  (BERT's checkpoint name)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        return F.linear(self.LayerNorm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)

    def official_state(self) -> dict[str, Tensor]:
        sd = {
            "cls.predictions.transform.dense.weight": self.dense.weight,
            "cls.predictions.transform.dense.bias": self.dense.bias,
            "cls.predictions.transform.LayerNorm.weight": self.LayerNorm.weight,
            "cls.predictions.transform.LayerNorm.bias": self.LayerNorm.bias,
            "cls.predictions.bias": self.bias,
        }
        return {k: v.detach().cpu().clone() for k, v in sd.items()}


@OBJECTIVES.register("dual_unimodal", config=DualUnimodalConfig)
class DualUnimodal(PretrainObjective):
    """Unimodal pretraining of a dual encoder: SimMIM on the Swin tower, masked LM on the BERT tower."""

    requires = frozenset({"multi_scale", "text_tokens"})

    def __init__(self, cfg: DualUnimodalConfig, encoder: nn.Module, tokenizer) -> None:
        super().__init__()
        if not isinstance(encoder, SwinBertEncoder):
            raise IncompatibleError(
                "incompatible components: objective 'dual_unimodal' pretrains a swin_bert encoder, got "
                f"{type(encoder).__name__}"
            )
        if tokenizer.mask_id is None:
            raise RisbenchError(f"objective dual_unimodal: the tokenizer ({tokenizer.describe()}) has no mask id")
        patch = encoder.cfg.patch_size
        self.stride = patch * 2 ** (encoder.num_stages - 1)  # of the last stage
        if cfg.mask_patch_size % patch or encoder.image_size % cfg.mask_patch_size:
            raise RisbenchError(
                f"objective dual_unimodal: mask_patch_size {cfg.mask_patch_size} must be a multiple of the patch "
                f"size {patch} and divide image_size {encoder.image_size}"
            )
        if encoder.cfg.freeze_text:
            raise RisbenchError("objective dual_unimodal: encoder.freeze_text is set; the text tower would not train")
        self.cfg = cfg
        self.encoder = encoder
        self.mask_id = int(tokenizer.mask_id)
        self.special = (int(tokenizer.bos_id), int(tokenizer.eos_id))
        self.random_vocab = int(tokenizer.vocab_size)  # ids the tokenizer can emit (<= the encoder's vocab)
        embed = encoder.swin.config.embed_dim
        last = embed * 2 ** (encoder.num_stages - 1)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # SimMIM
        self.mim_decoder = nn.Conv2d(last, self.stride**2 * 3, kernel_size=1)  # SimMIM's decoder.0
        bert = encoder.text_encoder.config
        self.mlm_head = BertMLMHead(bert.hidden_size, bert.vocab_size, bert.layer_norm_eps)
        nn.init.trunc_normal_(self.mlm_head.dense.weight, std=bert.initializer_range)
        nn.init.zeros_(self.mlm_head.dense.bias)

    # -- the two unimodal losses ---------------------------------------------------------------------

    def image_mask(self, batch_size: int, device=None) -> Tensor:
        """(B, H/m, W/m) bool over mask squares: round(ratio * count) per image, uniformly chosen."""
        side = self.encoder.image_size // self.cfg.mask_patch_size
        squares = torch.ones(batch_size, side * side, dtype=torch.bool, device=device)
        return choose_masked(squares, self.cfg.image_mask_ratio).view(batch_size, side, side)

    def image_loss(self, image: Tensor, mask: Tensor) -> Tensor:
        """SimMIM's loss on the masked pixels of `image` (B, 3, S, S) under square mask `mask`."""
        enc, swin = self.encoder, self.encoder.swin
        emb, grid = swin.embeddings.patch_embeddings(image)
        emb = swin.embeddings.norm(emb)
        per_patch = self.cfg.mask_patch_size // enc.cfg.patch_size
        patch_mask = mask.repeat_interleave(per_patch, 1).repeat_interleave(per_patch, 2).flatten(1)
        emb = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(emb.dtype), emb)
        emb = swin.embeddings.dropout(emb)
        out = swin.encoder(
            emb, grid, output_hidden_states=True, output_hidden_states_before_downsampling=True, always_partition=True
        )
        fmap = out.reshaped_hidden_states[-1]  # the last stage (B, C, S/stride, S/stride)
        norms = getattr(enc, "out_norms", {})
        norm = norms[str(enc.num_stages - 1)] if str(enc.num_stages - 1) in norms else None
        if norm is not None:
            fmap = norm(fmap.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        pred = F.pixel_shuffle(self.mim_decoder(fmap), self.stride).float()  # (B, 3, S, S)
        m = self.cfg.mask_patch_size
        target, pred = patchify(image.float(), m), patchify(pred, m)  # (B, squares, m*m*3)
        if self.cfg.norm_target:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        chosen = mask.flatten(1)
        loss = F.l1_loss if self.cfg.image_loss == "l1" else F.mse_loss
        return loss(pred[chosen], target[chosen])

    def text_loss(self, ids: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        """BERT's MLM loss on the text alone, and the accuracy on the chosen tokens."""
        words = ~pad & (ids != self.special[0]) & (ids != self.special[1])
        corrupted, chosen = bert_mlm_inputs(ids, words, self.cfg, self.mask_id, self.random_vocab)
        bert = self.encoder.text_encoder
        hidden = bert(input_ids=corrupted, attention_mask=(~pad).long()).last_hidden_state
        logits = self.mlm_head(hidden[chosen], bert.embeddings.word_embeddings.weight).float()
        target = ids[chosen]
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        image, ids, pad = batch["image"], batch["text_ids"], batch["text_pad_mask"]
        mask = self.image_mask(image.shape[0], image.device)
        mim = self.image_loss(image, mask)
        mlm, acc = self.text_loss(ids, pad)
        loss = self.cfg.image_loss_weight * mim + self.cfg.text_loss_weight * mlm
        logs = {"loss_mim": float(mim.detach()), "loss_mlm": float(mlm.detach()), "acc_mlm": float(acc)}
        return loss, logs

    # -- export ------------------------------------------------------------------------------------

    def export(self) -> dict[str, object]:
        """{"swin.pth": {"model": official Swin keys + SimMIM heads}, "bert/config.json": bytes,
        "bert/model.safetensors": bytes}: each tower as its official files."""
        from safetensors.torch import save

        swin = to_official_swin_state_dict(self.encoder.state_dict())
        swin["mask_token"] = self.mask_token.detach().cpu().clone()
        swin.update({f"decoder.0.{k}": v.detach().cpu().clone() for k, v in self.mim_decoder.state_dict().items()})
        bert = {f"bert.{k}": v.detach().cpu().clone() for k, v in self.encoder.text_encoder.state_dict().items()}
        bert.update(self.mlm_head.official_state())
        config = copy.deepcopy(self.encoder.text_encoder.config)
        config.architectures = ["BertForMaskedLM"]
        return {
            SWIN_FILE: {"model": swin},
            f"{BERT_DIR}/config.json": config.to_json_string(use_diff=False).encode(),
            f"{BERT_DIR}/{BERT_WEIGHTS}": save({k: v.contiguous() for k, v in bert.items()}, {"format": "pt"}),
        }

    @staticmethod
    def encoder_options(directory: str | Path) -> dict[str, str]:
        """The encoder options that load an export in `directory`."""
        return {"swin_weights": str(Path(directory) / SWIN_FILE), "bert_path": str(Path(directory) / BERT_DIR)}
