"""The built-in encoders (BEiT-3, Swin + BERT). A new encoder is a new module here, added to this list."""

from risbench.models.encoders import beit3, swin_bert  # noqa: F401  (registers them)
