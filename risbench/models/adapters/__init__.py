"""The built-in PEFT adapters, one per module (`dense` holds the dense conv branches they share). A new
adapter is a new module here, added to this list."""

from risbench.models.adapters import dense_aligner, text_adapter  # noqa: F401  (registers them)
