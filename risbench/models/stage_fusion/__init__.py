"""The built-in stage-fusion members (early fusion inside a vision tower), one per module; `base` holds the hook
that an encoder runs after its stages. A new member is a new module here, added to this list."""

from risbench.models.stage_fusion import dmmi, pwam, vltf  # noqa: F401  (registers them)
