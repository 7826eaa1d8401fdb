"""Datasets (REFER layout, SynthRef), their transforms, tokenizers and collation. A new dataset is a new
module here, added to this list."""

from risbench.data import refer, synthref  # noqa: F401  (registers them)
