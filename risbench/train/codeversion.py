"""The code version of a run: a hash of the source files that build, train and evaluate it.

As lm-evaluation-harness versions each task, a finished run is reused only when the code that produced it
is the code that would produce it now. The files are those of the run's components (encoder, FPN,
decoder, dataset, loss), of the training and evaluation code, and every risbench module they import,
followed statically through `import` statements (inside functions too). A package's `__init__` is part of it
only when imported by name, so adding a new FPN module does not change the version of runs that do not use it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from risbench.registry import DATASETS, DECODERS, ENCODERS, FPNS, LOSSES, Registry

PACKAGE = "risbench"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TRAIN_ROOTS = ("risbench.train.api",)  # training, evaluation, and everything they import
FLOPS_ROOTS = ("risbench.flops", "risbench.models.segmenter")


def _module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        path = spec.origin if spec is not None else None
    return Path(path).resolve() if path and str(path).endswith(".py") else None


def _imports(path: Path, module: str) -> set[str]:
    """The risbench modules a file imports (absolute names; `from a import b` gives a.b and a)."""
    tree = ast.parse(path.read_bytes(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.update(f"{base}.{a.name}" for a in node.names)
            names.add(base)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def source_files(modules: Iterable[str]) -> dict[str, Path]:
    """{module name: file} of `modules` and every risbench module they import, transitively."""
    todo, found = list(modules), {}
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _module_file(name)
        if path is None:  # `from a import b` where b is a function, not a module
            continue
        found[name] = path
        todo.extend(_imports(path, name) - set(found))
    return found


def _component_module(registry: Registry, name: Any) -> str | None:
    if not isinstance(name, str) or name not in registry:
        return None
    return inspect.getmodule(registry.get(name).obj).__name__


def run_modules(resolved: dict[str, Any], roots: tuple[str, ...] = TRAIN_ROOTS) -> list[str]:
    """The root modules of a resolved run config: `roots` and the modules of its components."""
    model = resolved.get("model") or {}
    parts = [
        (ENCODERS, (model.get("encoder") or {}).get("name")),
        (FPNS, (model.get("fpn") or {}).get("name")),
        (DECODERS, (model.get("decoder") or {}).get("name")),
    ]
    if roots == TRAIN_ROOTS:
        parts.append((DATASETS, (resolved.get("data") or {}).get("name")))
        parts.append((LOSSES, ((resolved.get("train") or {}).get("loss") or {}).get("name", "bce_dice")))
    found = [_component_module(reg, name) for reg, name in parts]
    return [*roots, *(m for m in found if m)]


def code_version(resolved: dict[str, Any], roots: tuple[str, ...] = TRAIN_ROOTS) -> str:
    """sha256 (16 hex digits) of the source files that build, train and evaluate the run `resolved`
    (`roots=FLOPS_ROOTS`: those that build and count its model)."""
    files = source_files(run_modules(resolved, roots))
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return h.hexdigest()[:16]
