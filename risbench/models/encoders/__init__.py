"""The built-in encoders (BEiT-3, Swin + BERT) and their pretraining objectives. A new encoder is a new
module here, added to this list."""

from risbench.models.encoders import beit3, beit3_pretrain, swin_bert  # noqa: F401  (registers them)
