"""The options of `beit3_mdm` (BEiT-3 masked data modelling and the optional pair terms beside it), validated
when a pretraining config is resolved; what each option does is in `beit3_pretrain.py`'s docstring."""

from __future__ import annotations

from dataclasses import dataclass

from risbench.errors import unknown_name_message

MIM_TARGETS = ("pixels", "hog")
BOW_POOLS = ("cls", "max")
ITM_READOUTS = ("cls", "patch_max")


@dataclass
class Beit3MdmConfig:
    """Options of BEiT-3 masked data modelling."""

    text_mask_ratio: float = 0.5  # share of each expression's word tokens that are masked (BEiT-3: 50%)
    image_mask_ratio: float = 0.0  # share of patches masked for pixel regression; 0 = text only
    image_loss_weight: float = 1.0
    # MAE's per-patch normalised pixels; false: the pixels as the transform gives them. On SynthRef the
    # normalisation turns a background patch (texture and +-6 grey levels of noise) into unit-variance
    # noise no model can predict, and removes the colour of an object's patch (docs/decisions.md §9)
    norm_target: bool = True
    mim_target: str = "pixels"  # pixels (MAE's) | hog (MaskFeat's histograms of oriented gradients)
    contrastive_weight: float = 0.0  # weight of the image-text contrast in dual-encoder mode; 0 = none
    init_temperature: float = 0.07  # BEiT-3 retrieval and CLIP: logit_scale starts at log(1 / 0.07)
    itm_weight: float = 0.0  # weight of image-text matching on the joint sequence (VLMo's ITM); 0 = none
    itm_swap: str = "shape"  # the data's word class whose words are swapped to make the matching negatives
    itm_readout: str = "cls"  # cls (VLMo: the joint CLS, 2-way) | patch_max (the best patch's score, BCE)
    itc_negatives: str = ""  # a word class: its swapped captions join the contrast as hard negatives; "" = none
    bow_weight: float = 0.0  # weight of the image-level bag of words (SuperClass); 0 = none
    bow_pool: str = "cls"  # cls (SuperClass: the image CLS, softmax) | max (patch tags max-pooled, BCE)
    tag_weight: float = 0.0  # weight of the attribute tags of `tag_classes` from max-pooled patches; 0 = none
    tag_classes: tuple[str, ...] = ()  # word classes of the data the tags predict, e.g. (shape, colour)

    def __post_init__(self) -> None:
        if self.itm_weight < 0.0:
            raise ValueError(f"itm_weight must be >= 0, got {self.itm_weight}")
        if self.contrastive_weight < 0.0:
            raise ValueError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if self.itm_readout not in ITM_READOUTS:
            raise ValueError(unknown_name_message("itm_readout", self.itm_readout, ITM_READOUTS))
        if self.bow_pool not in BOW_POOLS:
            raise ValueError(unknown_name_message("bow_pool", self.bow_pool, BOW_POOLS))
        if self.bow_weight < 0.0:
            raise ValueError(f"bow_weight must be >= 0, got {self.bow_weight}")
        if self.tag_weight < 0.0:
            raise ValueError(f"tag_weight must be >= 0, got {self.tag_weight}")
        if self.tag_weight > 0.0 and not self.tag_classes:
            raise ValueError("tag_weight > 0 predicts the words of tag_classes: name at least one, e.g. [shape]")
        if self.itc_negatives and self.contrastive_weight == 0.0:
            raise ValueError("itc_negatives adds hard negatives to the contrast: set contrastive_weight > 0")
        if not 0.0 < self.init_temperature <= 1.0:
            raise ValueError(f"init_temperature must be in (0, 1], got {self.init_temperature}")
        if not 0.0 < self.text_mask_ratio <= 1.0:
            raise ValueError(f"text_mask_ratio must be in (0, 1], got {self.text_mask_ratio}")
        if self.mim_target not in MIM_TARGETS:
            raise ValueError(unknown_name_message("mim_target", self.mim_target, MIM_TARGETS))
        if not 0.0 <= self.image_mask_ratio < 1.0:
            raise ValueError(f"image_mask_ratio must be in [0, 1), got {self.image_mask_ratio}")
