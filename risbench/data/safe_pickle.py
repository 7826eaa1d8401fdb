"""A restricted unpickler for dataset pickles (REFER `refs(*).p`): plain containers and scalars only.

`pickle.load` runs whatever callable a pickle names (`os.system` included), so a crafted dataset file
could run code during `risbench data check`. This unpickler refuses every global except the few builtin
constructors that plain data needs: set and frozenset, and `_codecs.encode`, which Python 3 uses for
bytes under protocol 2. Python-2 `str` and `unicode` need no global at all; they are read with latin1."""

from __future__ import annotations

import io
import pickle
from typing import Any

ALLOWED_GLOBALS = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("__builtin__", "set"),
        ("__builtin__", "frozenset"),
        ("_codecs", "encode"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` allows only ALLOWED_GLOBALS."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global '{module}.{name}' (only plain data is read)")


def load_plain(data: bytes, encoding: str = "latin1") -> Any:
    """Unpickle `data` (containers and scalars only); anything that names other code raises UnpicklingError."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
