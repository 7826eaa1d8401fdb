"""The built-in decoders, one per module (`head` is the shared mask head). A new decoder is a new module
here, added to this list."""

from risbench.models.decoders import bi_direction, cgformer, cris, cross_attention, dmmi, risam, sam_two_way, shared  # noqa: F401  (registers them)
