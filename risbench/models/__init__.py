"""Model components. Importing this package registers the built-in encoders, FPNs and decoders."""

from risbench.models import decoders, encoders, fpn  # noqa: F401  (registration side effects)
