"""The built-in encoders (BEiT-3, Swin + BERT, the tower-composing `dual`) and their pretraining objectives.
A new encoder is a new module here, added to this list."""

from risbench.models.encoders import (  # noqa: F401  (registers them)
    beit3,
    beit3_pretrain,
    dual,
    dual_contrastive,
    swin_bert,
    swin_bert_pretrain,
)
