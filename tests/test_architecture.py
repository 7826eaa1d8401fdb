"""The import graph of risbench: no cycles among module-level imports, and imports go one way down the
layers cli -> runner -> train -> models/data -> spec -> registry -> config/io/results/flops -> errors."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from risbench.config import PROJECT_ROOT

# Highest first. A module may import its own layer and the layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("api", ("risbench",)),  # the package itself: `risbench.build_model`
    ("cli", ("risbench.cli",)),
    (
        "runner",
        (
            "risbench.runner",
            "risbench.efficiency",
            "risbench.benchmark",
            "risbench.benchmark_pretrain",
            "risbench.baseline",
            "risbench.loader_bench",
            "risbench.scaling",
        ),
    ),
    ("train", ("risbench.train",)),
    ("models/data", ("risbench.models", "risbench.data")),
    ("spec", ("risbench.spec",)),
    ("registry", ("risbench.registry",)),
    (
        "config",
        (
            "risbench.config",
            "risbench.io",
            "risbench.results",
            "risbench.torchscript",
            "risbench.flops",
            "risbench.peak",
            "risbench.sdpa_check",
            "risbench.step_timing",
        ),
    ),
    ("errors", ("risbench.errors",)),
]
# The old launch module name, kept for torchrun lines printed before it moved to cli/.
ALLOWED_UPWARD = {("risbench.train.launch", "risbench.cli.launch")}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under root/risbench."""
    out = {}
    for path in sorted((root / "risbench").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(tree: ast.AST, module: str, is_package: bool, top_level_only: bool) -> list[str]:
    """Absolute names a module imports (`from a import b` gives a.b and a). With `top_level_only`,
    imports inside functions and under `if TYPE_CHECKING:` are left out (they do not run at import)."""
    package = module if is_package else module.rpartition(".")[0]
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if top_level_only and isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                names.extend(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*up, base] if base else up)
                names.append(base)
                names.extend(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    return names


def import_graph(root: Path, top_level_only: bool) -> dict[str, set[str]]:
    """module -> the risbench modules it imports (names resolved to the longest existing module)."""
    files = module_files(root)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        for name in _imports(tree, module, path.name == "__init__.py", top_level_only):
            if name.split(".")[0] != "risbench" or name not in files:
                continue
            if name != module:
                graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None. A package's own __init__ importing its submodules is not
    a cycle with them (a submodule's `from risbench.models.fpn import x` does not re-run the __init__)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def edges(node: str) -> set[str]:
        return {t for t in graph.get(node, ()) if not node.startswith(t + ".")}

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges(node)):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layer_of(module: str) -> int:
    """Index into LAYERS (0 = highest) of the most specific prefix that matches `module`."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a (layer) imports b (higher layer)' for every upward import not in ALLOWED_UPWARD."""
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target == "risbench" or module.startswith(target + "."):
                continue  # the package's own __init__ (imported with any submodule)
            if layer_of(target) < layer_of(module) and (module, target) not in ALLOWED_UPWARD:
                out.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    return out


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph(PROJECT_ROOT, top_level_only=True))
    assert cycle is None, " -> ".join(cycle or [])


def test_imports_go_one_way_down_the_layers() -> None:
    # every import, also those inside functions: a late import upward is still a dependency upward
    assert layer_violations(import_graph(PROJECT_ROOT, top_level_only=False)) == []


def test_cycle_detection_on_a_synthetic_graph() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": {"p"}}) is None  # a package and its own submodule


def test_a_planted_cycle_and_an_upward_import_are_caught(tmp_path: Path) -> None:
    shutil.copytree(PROJECT_ROOT / "risbench", tmp_path / "risbench", ignore=shutil.ignore_patterns("__pycache__"))
    assert find_cycle(import_graph(tmp_path, top_level_only=True)) is None
    errors = tmp_path / "risbench" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom risbench.registry import FPNS  # noqa: E402\n")
    cycle = find_cycle(import_graph(tmp_path, top_level_only=True))
    assert cycle is not None and cycle[0] == cycle[-1] and "risbench.errors" in cycle, cycle
    assert "risbench.errors (errors) imports risbench.registry (registry)" in layer_violations(
        import_graph(tmp_path, top_level_only=False)
    )


def test_every_module_is_in_a_layer() -> None:
    for module in module_files(PROJECT_ROOT):
        layer_of(module)


def test_a_registry_lookup_loads_only_that_kind() -> None:
    code = (
        "import risbench.registry as r, sys; r.FPNS.get('shared'); "
        "print('risbench.train.trainer' in sys.modules, 'risbench.models.fpn.shared' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("registry_name", ["ENCODERS", "FPNS", "DECODERS", "DATASETS", "LOSSES", "METRICS"])
def test_registries_name_their_builtins_above_the_registry(registry_name: str) -> None:
    import risbench.registry as registry

    reg = getattr(registry, registry_name)
    assert reg.builtins and layer_of(reg.builtins) < layer_of("risbench.registry")
