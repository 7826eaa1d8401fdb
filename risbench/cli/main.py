"""Entry point of the `risbench` command: builds the typer app from the command modules listed here
and turns user errors (RisbenchError) into one line on stderr and exit code 2."""

from __future__ import annotations

import shlex
import sys

import typer

from risbench.cli import bench, data, figure, flops, listing, pretrain, run, table, train
from risbench.errors import RisbenchError
from risbench.train.signals import TrainingInterrupted

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


for _module in (bench, data, figure, flops, listing, pretrain, run, table, train):
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors)."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except RisbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        command = shlex.join(["risbench", *(sys.argv[1:] if argv is None else argv)])
        print(f"interrupted: {exc}; resume with: {command}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); nothing was saved since the last checkpoint", file=sys.stderr)
        return 130
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
