"""`risbench list [KIND]`: the registered components and presets, with the first line of each docstring."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from risbench.config import list_presets, read_yaml
from risbench.errors import UnknownNameError, unknown_name_message
from risbench.registry import REGISTRIES, config_fields

PRESET_KINDS = {"models": "models", "datasets": "datasets", "recipes": "recipes"}


def list_rows(kind: str) -> list[tuple[str, str, str]]:
    """(name, summary, options) rows for one registry or preset kind."""
    if kind in REGISTRIES:
        return [(e.name, e.summary, ", ".join(config_fields(e.config))) for e in REGISTRIES[kind]]
    if kind in PRESET_KINDS:
        rows = []
        for path in list_presets(PRESET_KINDS[kind]):
            desc = str(read_yaml(path).get("description") or "").strip()
            rows.append((path.stem, desc.splitlines()[0] if desc else "", ""))
        return rows
    raise UnknownNameError(unknown_name_message("kind", kind, [*REGISTRIES, *PRESET_KINDS]))


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_cmd(
        kind: str = typer.Argument(
            None, help="encoders, fpns, decoders, datasets, losses, metrics, models, recipes"
        ),
    ) -> None:
        """List what can be combined: components (with their options) and presets."""
        console = Console()
        kinds = [kind] if kind else [*REGISTRIES, *PRESET_KINDS]
        for k in kinds:
            table = Table(title=k, show_lines=False, title_justify="left")
            table.add_column("name", style="bold")
            table.add_column("what it is")
            if k in REGISTRIES:
                table.add_column("options")
            for row in list_rows(k):
                table.add_row(*(row if k in REGISTRIES else row[:2]))
            console.print(table)
