"""The tensors of a TorchScript archive (`torch.jit.save`, e.g. OpenAI CLIP's `ViT-B-16.pt`), without its code.

`torch.jit.load` compiles and can run the archive's `code/` folder; a file a user is given must not run code
(issue 12). An archive is a zip: `<root>/data.pkl` pickles the module tree (objects of `__torch__.*`
classes whose attributes are tensors and submodules), and `<root>/data/<key>` holds each storage's bytes.
`load_torchscript_state_dict` unpickles `data.pkl` with a restricted unpickler: `__torch__.*` classes
become plain attribute holders, tensors are rebuilt from the storage files by torch's own
`_rebuild_tensor_v2`, and any other global is refused. `code/` is never read. The unpickler is written by
hand (docs/decisions.md §13): torch offers no loader for TorchScript archives that skips the code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from risbench.errors import RisbenchError

STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class ScriptObject:
    """A `__torch__.*` object of the archive: its attributes only (no methods, no code)."""

    qualname = "?"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, root: str, data: bytes) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (ScriptObject,), {"qualname": f"{module}.{name}"})
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a TorchScript archive's data")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        dtype = kind.dtype if isinstance(kind, _StorageType) else None
        if dtype is None:
            raise pickle.UnpicklingError(f"unknown storage type {kind!r}")
        raw = self.archive.read(f"{self.root}/data/{key}")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) < numel * itemsize:
            raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes for {numel} elements of {dtype}")
        untyped = torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage()
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _walk(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value.detach()
        elif isinstance(value, ScriptObject):
            _walk(value, f"{prefix}{name}.", out, seen)


def load_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """{dotted name: tensor} of every tensor attribute in a TorchScript archive's module tree, as
    `module.state_dict()` would name them; no code of the archive is compiled or run."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise RisbenchError(f"{path}: not a TorchScript archive (a zip file): {exc}") from None
    with archive:
        roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(roots) != 1:
            raise RisbenchError(f"{path}: not a TorchScript archive (no single <root>/data.pkl in the zip)")
        try:
            module = _ArchiveUnpickler(archive, roots[0], archive.read(f"{roots[0]}/data.pkl")).load()
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError) as exc:
            raise RisbenchError(f"{path}: refused to read its data ({exc}); nothing in it was run") from None
    if not isinstance(module, ScriptObject):
        raise RisbenchError(f"{path}: its data.pkl holds a {type(module).__name__}, not a TorchScript module")
    out: dict[str, torch.Tensor] = {}
    _walk(module, "", out, set())
    return out
