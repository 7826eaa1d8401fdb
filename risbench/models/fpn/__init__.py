"""The built-in FPNs, one per module. A new FPN is a new module here, added to this list."""

from risbench.models.fpn import bi_direction, cris, cross_attention, detris, passthrough, pwam, risam, shared  # noqa: F401  (registers them)
