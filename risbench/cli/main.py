"""Entry point of the `risbench` command: builds the typer app from the command modules of this package
and turns user errors (RisbenchError) into one line on stderr and exit code 2."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

import risbench.cli as cli_pkg
from risbench.errors import RisbenchError

app = typer.Typer(
    name="risbench",
    help="Reproducible comparisons of fusion strategies for referring image segmentation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Reproducible comparisons of fusion strategies for referring image segmentation."""


for _module in sorted(m.name for m in pkgutil.iter_modules(cli_pkg.__path__)):
    if _module != "main":
        importlib.import_module(f"risbench.cli.{_module}").register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors)."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except RisbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 130
    except Exception as exc:
        # Usage errors from (typer's vendored) click: bad option, missing argument.
        if callable(getattr(exc, "show", None)) and hasattr(exc, "exit_code"):
            exc.show()
            return 2
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
