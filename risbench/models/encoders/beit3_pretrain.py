"""`beit3_mdm`: BEiT-3's masked data modelling on image-text pairs, at small scale (`risbench pretrain`).

BEiT-3 (Wang et al. 2022, §2.2) pretrains one multiway transformer with one objective: masked data
modelling. For image-text pairs it masks 50% of the text tokens and predicts them from the image and the
remaining words; images alone get masked image modelling over 40% of the patches (block-wise, targets
from a VQ-KD tokenizer). Here (docs/decisions.md, "Pretraining"):
- text: `text_mask_ratio` of each expression's word tokens (at least one) become the tokenizer's
  `mask_id`; a linear head on the final joint sequence predicts them (cross-entropy over the masked
  positions only). On SynthRef the words are colours, shapes, sizes and positions, so predicting them
  means reading the referred object from the pixels.
- image (optional, `image_mask_ratio` > 0): uniformly random patches become `vision_embed.mask_token`
  and a linear head regresses their pixels (no visual tokenizer is available offline), per-patch
  normalised as MAE's target (`norm_target`, the default) or as the transform gives them, scaled by
  `image_loss_weight`. `mim_target: hog` regresses MaskFeat's target instead (Wei et al. 2022): per masked
  patch, histograms of oriented gradients (`HOG_BINS` unsigned orientations, magnitude-weighted, per colour
  channel, on a 2 x 2 grid of cells), left unnormalised so that SynthRef's background noise stays small and an
  outline crossing the patch is the large part of the target (docs/decisions.md §9).
- image-text contrast (optional, `contrastive_weight` > 0): not in BEiT-3's pretraining but in its
  retrieval fine-tuning and in VLMo's pretraining (the same multiway transformer, Bao et al. 2022): the
  unmasked image runs alone through the vision expert and the unmasked caption alone through the language
  expert (`Beit3Encoder.unimodal_sequence`), each CLS goes through a bias-free linear head (`vision_head`,
  `language_head`) and is L2-normalised, and the B x B cosine similarities scaled by exp(`logit_scale`)
  (initialised at log(1 / 0.07), the scale clipped at 100) give CLIP's symmetric InfoNCE. Captions that are
  identical token for token are all positives of each other. The image CLS must then tell a caption's
  objects apart from the pixels alone, the signal that masked words did not give (docs/decisions.md §9).
  `itc_negatives: <word class>` adds NegCLIP's hard negatives (Yuksekgonul et al. 2023) to the image -> text
  side: each caption with one word of that class swapped for another meaning is one more column of every
  image's row, so an image must say which of the two captions it shows (the text -> image side is unchanged).
- image-text matching (optional, `itm_weight` > 0; VLMo's ITM): a linear head on the joint sequence's CLS
  tells matching captions from negatives made by swapping one word of the data's class `itm_swap` for a word
  of another meaning (`pair_losses.swap_class_words`), half of each batch. `itm_readout: patch_max` scores each
  patch of the joint sequence instead and takes the best one as the pair's logit (binary cross-entropy;
  multiple-instance learning as in weakly supervised grounding): a pair matches when some patch shows what the
  caption says, so the patches themselves must compare their object with the words, as a mask head needs.
- image-level bag of words (optional, `bow_weight` > 0; SuperClass, Huang et al. 2024, without its IDF
  weights): the image alone through the vision expert, a linear head on its CLS over the vocabulary, softmax
  cross-entropy against the caption's word ids as an evenly spread target. No word is seen: every word of
  the caption must be found in the pixels, through the route (patches -> image CLS) that learns shape
  fastest in the direct probe of docs/decisions.md §9. `bow_pool: max` tags each patch instead and
  max-pools the logits over the patches (multiple-instance learning, Oquab et al. 2015), with binary
  cross-entropy per word: the gradient reaches the patches that show a word, not the background.
- attribute tags (optional, `tag_weight` > 0 with `tag_classes`, e.g. [shape]): the image alone through the
  vision expert, its final patch tokens max-pooled over the image, a linear head over the vocabulary, and per
  word class a softmax over the class's meanings (the logsumexp of each meaning's words' logits) against the
  meanings the caption names (`pair_losses.class_tag_loss`). The signal of the direct shape probe that
  learned shape in 200 steps (docs/decisions.md §9), with the labels read from the caption, not the scene.
The export is the official unilm layout: encoder keys under `beit3.`, the heads (`mlm_head.*`, `mim_head.*`,
BEiT-3 retrieval's `vision_head.*`, `language_head.*`, `logit_scale`, `itm_head.*`, `bow_head.*`, `tag_head.*`)
beside them, so `encoder.weights=` loads it exactly as an official file and lists the heads as ignored.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from risbench.errors import IncompatibleError, RisbenchError
from risbench.models.encoders.beit3 import Beit3Encoder
from risbench.models.encoders.beit3_checkpoint import PREFIX
from risbench.models.encoders.beit3_mdm_config import Beit3MdmConfig
from risbench.models.encoders.masking import HOG_BINS, HOG_CELLS, blank_patches, choose_masked, hog_targets, patchify
from risbench.models.encoders.pair_losses import (
    bag_of_words_loss,
    class_tag_loss,
    max_pooled_words_loss,
    multi_positive_info_nce,
    swap_class_words,
)
from risbench.models.interfaces import PretrainObjective
from risbench.registry import OBJECTIVES

ENCODER_FILE = "encoder.pth"
# the heads beside the encoder in the export
HEADS = ("mlm_head", "mim_head", "vision_head", "language_head", "itm_head", "bow_head", "tag_head")


@OBJECTIVES.register("beit3_mdm", config=Beit3MdmConfig)
class Beit3MaskedDataModelling(PretrainObjective):
    """BEiT-3 masked data modelling: masked words (and optionally patches) of image-text pairs."""

    requires = frozenset({"joint_tokens"})
    continues = True

    def __init__(self, cfg: Beit3MdmConfig, encoder: nn.Module, tokenizer) -> None:
        super().__init__()
        if not isinstance(encoder, Beit3Encoder):
            raise IncompatibleError(
                "incompatible components: objective 'beit3_mdm' pretrains a beit3 encoder, got "
                f"{type(encoder).__name__}"
            )
        if tokenizer.mask_id is None:
            raise RisbenchError(f"objective beit3_mdm: the tokenizer ({tokenizer.describe()}) has no mask id")
        self.cfg = cfg
        self.encoder = encoder
        self.mask_id = int(tokenizer.mask_id)
        self.special = (int(tokenizer.bos_id), int(tokenizer.eos_id))
        dim = encoder.embed_dim
        self.mlm_head = nn.Linear(dim, encoder.vocab_size)
        target_dim = 3 * encoder.patch_size**2 if cfg.mim_target == "pixels" else 3 * HOG_BINS * HOG_CELLS**2
        self.mim_head = nn.Linear(dim, target_dim) if cfg.image_mask_ratio > 0 else None
        self.vision_head = self.language_head = self.logit_scale = None
        if cfg.contrastive_weight > 0:
            self.vision_head = nn.Linear(dim, dim, bias=False)
            self.language_head = nn.Linear(dim, dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        itm_out = 2 if cfg.itm_readout == "cls" else 1
        self.itm_head = nn.Linear(dim, itm_out) if cfg.itm_weight > 0 else None
        self.bow_head = nn.Linear(dim, encoder.vocab_size) if cfg.bow_weight > 0 else None
        self.tag_head = nn.Linear(dim, encoder.vocab_size) if cfg.tag_weight > 0 else None
        self.class_words: dict[str, tuple[Tensor, Tensor]] = {}  # class -> (word ids, meanings), bound at build
        for name in HEADS:
            head = getattr(self, name)
            if head is not None:
                nn.init.trunc_normal_(head.weight, std=0.02)
                if head.bias is not None:
                    nn.init.zeros_(head.bias)

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        image, ids, pad = batch["image"], batch["text_ids"], batch["text_pad_mask"]
        words = ~pad & (ids != self.special[0]) & (ids != self.special[1])
        masked = choose_masked(words, self.cfg.text_mask_ratio)
        patch_mask = None
        if self.mim_head is not None:
            n = self.encoder.num_vision_tokens - 1
            patch_mask = choose_masked(torch.ones(ids.shape[0], n, dtype=torch.bool), self.cfg.image_mask_ratio)
        seen = image if patch_mask is None else blank_patches(image, patch_mask, self.encoder.patch_size)
        seq = self.encoder.final_sequence(seen, ids.masked_fill(masked, self.mask_id), pad, patch_mask)
        split = self.encoder.num_vision_tokens
        logits = self.mlm_head(seq[:, split:][masked])
        target = ids[masked]
        text_loss = F.cross_entropy(logits.float(), target)
        logs = {"loss_mlm": float(text_loss.detach()), "acc_mlm": float((logits.argmax(-1) == target).float().mean())}
        loss = text_loss
        if self.mim_head is not None:
            if self.cfg.mim_target == "hog":
                image_target = hog_targets(image, self.encoder.patch_size)
            else:
                image_target = patchify(image, self.encoder.patch_size)
                if self.cfg.norm_target:
                    mean, var = image_target.mean(-1, keepdim=True), image_target.var(-1, keepdim=True)
                    image_target = (image_target - mean) / (var + 1e-6).sqrt()
            pred = self.mim_head(seq[:, 1:split][patch_mask]).float()
            image_loss = F.mse_loss(pred, image_target[patch_mask])
            logs["loss_mim"] = float(image_loss.detach())
            loss = loss + self.cfg.image_loss_weight * image_loss
        alone = None  # the image alone through the vision expert, shared by the image-alone terms
        if self.vision_head is not None or self.bow_head is not None or self.tag_head is not None:
            alone = self.encoder.unimodal_sequence(image=image)
        if self.vision_head is not None:
            contrast, acc = self.contrastive_loss(alone, ids, pad)
            logs.update(loss_itc=float(contrast.detach()), **acc)
            loss = loss + self.cfg.contrastive_weight * contrast
        if self.itm_head is not None:
            matching, acc = self.matching_loss(image, ids, pad)
            logs.update(loss_itm=float(matching.detach()), acc_itm=acc)
            loss = loss + self.cfg.itm_weight * matching
        if self.bow_head is not None:
            if self.cfg.bow_pool == "max":
                bow = max_pooled_words_loss(self.bow_head(alone[:, 1:]), ids, words)
            else:
                bow = bag_of_words_loss(self.bow_head(alone[:, 0]), ids, words)
            logs["loss_bow"] = float(bow.detach())
            loss = loss + self.cfg.bow_weight * bow
        if self.tag_head is not None:
            tags, acc = self.tag_loss(alone, ids, words)
            logs.update(loss_tag=float(tags.detach()), **acc)
            loss = loss + self.cfg.tag_weight * tags
        return loss, logs

    def _class_options(self) -> list[tuple[str, str]]:
        """(option, word class) of the terms that need a class's words: matching's `itm_swap`, the contrast's
        negatives, the attribute tags."""
        options = [("itm_swap", self.cfg.itm_swap)] if self.itm_head is not None else []
        options += [("itc_negatives", self.cfg.itc_negatives)] if self.cfg.itc_negatives else []
        return options + ([("tag_classes", c) for c in self.cfg.tag_classes] if self.tag_head is not None else [])

    def bind_word_classes(self, classes: dict[str, dict[int, int]], data: str) -> None:
        """Take the data's word classes ({class: {token id: meaning}}, `risbench.data.words.class_ids`) that
        image-text matching (`itm_swap`) and the contrast's hard negatives (`itc_negatives`) swap and the
        attribute tags (`tag_classes`) predict."""
        for option, name in self._class_options():
            words = classes.get(name, {})
            if len(set(words.values())) < 2:
                known = ", ".join(sorted(classes)) or "none"
                raise IncompatibleError(
                    f"incompatible components: objective 'beit3_mdm' swaps words of class '{name}' "
                    f"(objective.{option}), but the data '{data}' names word classes: {known}"
                )
            self.class_words[name] = (torch.tensor(list(words)), torch.tensor(list(words.values())))

    def _class_words(self, name: str) -> tuple[Tensor, Tensor]:
        """(word ids, meanings) of the bound class `name`."""
        if name not in self.class_words:
            raise RisbenchError(f"objective beit3_mdm: the words of class '{name}' need bind_word_classes() first")
        return self.class_words[name]

    def _swapped(self, name: str, ids: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """`swap_class_words` with the bound words of class `name`."""
        word_ids, meanings = (t.to(ids.device) for t in self._class_words(name))
        return swap_class_words(ids, word_ids, meanings, rows)

    def tag_loss(self, alone: Tensor, ids: Tensor, words: Tensor) -> tuple[Tensor, dict[str, float]]:
        """(the attribute tags' loss, the mean over `tag_classes`; {acc_tag_<class>: the share of captions
        naming the class whose top meaning is one they name}) from the image-alone sequence `alone`."""
        logits = self.tag_head(alone[:, 1:].amax(dim=1))
        losses, logs = [], {}
        for name in self.cfg.tag_classes:
            word_ids, meanings = (t.to(ids.device) for t in self._class_words(name))
            loss, acc = class_tag_loss(logits, ids, words, word_ids, meanings)
            losses.append(loss)
            logs[f"acc_tag_{name}"] = acc
        return torch.stack(losses).mean(), logs

    def matching_loss(self, image: Tensor, ids: Tensor, pad: Tensor) -> tuple[Tensor, float]:
        """(image-text matching on the joint sequence, its accuracy): half of the captions, drawn at random, get
        one word of class `itm_swap` replaced by one of another meaning and must be told from the rest, by the
        joint CLS (`itm_readout: cls`) or by the best-scoring patch (`patch_max`)."""
        rows = torch.rand(ids.shape[0], device=ids.device) < 0.5
        swapped, changed = self._swapped(self.cfg.itm_swap, ids, rows)
        seq = self.encoder.final_sequence(image, swapped, pad, None)
        target = (~changed).long()  # 1 = the caption matches the image
        if self.cfg.itm_readout == "patch_max":
            logit = self.itm_head(seq[:, 1 : self.encoder.num_vision_tokens]).squeeze(-1).amax(dim=1).float()
            loss = F.binary_cross_entropy_with_logits(logit, target.float())
            return loss, float(((logit > 0).long() == target).float().mean())
        logits = self.itm_head(seq[:, 0]).float()
        return F.cross_entropy(logits, target), float((logits.argmax(-1) == target).float().mean())

    def contrastive_loss(self, alone: Tensor, ids: Tensor, pad: Tensor) -> tuple[Tensor, dict[str, float]]:
        """For the image-alone sequence `alone` (`Beit3Encoder.unimodal_sequence`): (the image-text contrast of
        the batch, {acc_i2t: the share of images whose best caption is a match,
        and with `itc_negatives` acc_neg: the share whose own caption beats its swapped one})."""
        vision = self.vision_head(alone[:, 0])
        language = self.language_head(self.encoder.unimodal_sequence(text_ids=ids, text_pad_mask=pad)[:, 0])
        same = (ids.unsqueeze(1) == ids.unsqueeze(0)).all(dim=-1)
        scale = self.logit_scale.exp().clamp(max=100.0)
        negatives, changed = None, None
        if self.cfg.itc_negatives:
            swapped, changed = self._swapped(self.cfg.itc_negatives, ids, torch.ones_like(same[0]))
            negatives = self.language_head(
                self.encoder.unimodal_sequence(text_ids=swapped[changed], text_pad_mask=pad[changed])[:, 0]
            )
        loss, logits = multi_positive_info_nce(vision, language, scale, same, negatives)
        logs = {"acc_i2t": float(same.gather(1, logits[:, : same.shape[1]].argmax(1, keepdim=True)).float().mean())}
        if changed is not None:
            rows = changed.nonzero().squeeze(-1)
            own = logits[rows, rows]
            swapped_logit = logits[rows, same.shape[1] + torch.arange(rows.numel(), device=rows.device)]
            logs["acc_neg"] = float((own > swapped_logit).float().mean()) if rows.numel() else 0.0
        return loss, logs

    def masked_word_logits(self, image: Tensor, ids: Tensor, pad: Tensor, masked: Tensor) -> Tensor:
        """(n_masked, vocab): the text head at the `masked` positions of `ids` (already masked), no patch
        masked (`risbench pretrain-probe`)."""
        seq = self.encoder.final_sequence(image, ids, pad, None)
        return self.mlm_head(seq[:, self.encoder.num_vision_tokens :][masked])

    def load_export(self, directory: str | Path, strict: bool = True) -> None:
        """Load what `export` wrote to `directory` (encoder and heads); `strict=False` keeps the init of a
        head the file does not have (a continued stage that adds one). The encoder loads strictly."""
        state = torch.load(Path(directory) / ENCODER_FILE, map_location="cpu", weights_only=True)["model"]
        encoder = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
        self.encoder.load_state_dict(encoder, strict=True)
        for name in HEADS:
            head = getattr(self, name)
            part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            if head is not None and (strict or part):
                head.load_state_dict(part)
        if self.logit_scale is not None and (strict or "logit_scale" in state):
            self.logit_scale.data.copy_(state["logit_scale"])

    def continue_export(self, directory: str | Path) -> None:
        """Start from the export in `directory` (`continue_from`): its encoder and the heads it has."""
        self.load_export(directory, strict=False)

    def export(self) -> dict[str, object]:
        """{"encoder.pth": {"model": {"beit3.<key>": tensor, ..., "mlm_head.*": ...}}}: the official layout."""
        state = {PREFIX + k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        for name in HEADS:
            head = getattr(self, name)
            if head is not None:
                state.update({f"{name}.{k}": v.detach().cpu().clone() for k, v in head.state_dict().items()})
        if self.logit_scale is not None:
            state["logit_scale"] = self.logit_scale.detach().cpu().clone()
        return {ENCODER_FILE: {"model": state}}

    @staticmethod
    def encoder_options(directory: str | Path) -> dict[str, str]:
        """The encoder options that load an export in `directory`."""
        return {"weights": str(Path(directory) / ENCODER_FILE)}
