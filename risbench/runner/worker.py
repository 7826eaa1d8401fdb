"""`python -m risbench.runner.worker RUN_DIR`: execute one prepared run (what the local GPU backend starts
in one subprocess per GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

from risbench.runner.backends import execute_run


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    keep_stale = "--keep-stale" in args
    args = [a for a in args if a != "--keep-stale"]
    if len(args) != 1:
        print("usage: python -m risbench.runner.worker RUN_DIR [--keep-stale]", file=sys.stderr)
        return 2
    execute_run(Path(args[0]), quiet=False, keep_stale=keep_stale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
