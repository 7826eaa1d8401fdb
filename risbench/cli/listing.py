"""`risbench list [KIND]`: the registered components and presets, with the first line of each docstring."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from risbench.config import list_presets, read_yaml
from risbench.errors import UnknownNameError, unknown_name_message
from risbench.registry import REGISTRIES, config_fields

# Preset folders under registry/ (models and recipes are presets only; datasets are both).
PRESET_KINDS = ("models", "datasets", "recipes")


def known_kinds() -> list[str]:
    return sorted(set(REGISTRIES) | set(PRESET_KINDS))


def component_rows(kind: str) -> list[tuple[str, str, str]]:
    """(name, summary, options) for each registered component of `kind`."""
    return [(e.name, e.summary, ", ".join(config_fields(e.config))) for e in REGISTRIES[kind]]


def preset_rows(kind: str) -> list[tuple[str, str]]:
    """(name, description) for each preset file of `kind`."""
    rows = []
    for path in list_presets(kind):
        desc = str(read_yaml(path).get("description") or "").strip()
        rows.append((path.stem, desc.splitlines()[0] if desc else ""))
    return rows


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_cmd(
        kind: str = typer.Argument(None, help="one of: " + ", ".join(known_kinds()) + " (default: all)"),
    ) -> None:
        """List what can be combined: components (with their options) and presets."""
        if kind is not None and kind not in known_kinds():
            raise UnknownNameError(unknown_name_message("kind", kind, known_kinds()))
        console = Console()
        for k in [kind] if kind else known_kinds():
            if k in REGISTRIES:
                table = Table(title=k, title_justify="left")
                for col in ("name", "what it is", "options"):
                    table.add_column(col)
                for row in component_rows(k):
                    table.add_row(*row)
                console.print(table)
            if k in PRESET_KINDS:
                table = Table(title=f"{k} presets (registry/{k}/)", title_justify="left")
                table.add_column("name")
                table.add_column("description")
                for row in preset_rows(k):
                    table.add_row(*row)
                console.print(table)
