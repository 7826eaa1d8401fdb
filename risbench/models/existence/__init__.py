"""The built-in existence heads (EXISTENCE_HEADS; base class risbench.models.interfaces.ExistenceHead), one per
module. A new head is a new module here, added to this list; a model uses one with `existence: {name: ...}`."""

from risbench.models.existence import pooled, refsegformer  # noqa: F401  (registers them)
