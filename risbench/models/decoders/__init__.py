"""The built-in decoders, one per module (`head` is the shared mask head, `refsegformer_common` what RefSegformer's
two decoders share). A new decoder is a new module here, added to this list."""

from risbench.models.decoders import (  # noqa: F401  (registers them)
    bi_direction,
    cgformer,
    cris,
    cross_attention,
    dmmi,
    refsegformer_pixel,
    refsegformer_xattn,
    risam,
    sam_two_way,
    shared,
)
