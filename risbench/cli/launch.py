"""`torchrun --standalone --nproc-per-node K -m risbench.cli.launch CONFIG [--set k=v ...] [--run-dir DIR]`:
`risbench train` as a module torchrun can start (every rank runs it; rank 0 writes)."""

from __future__ import annotations

import sys

from risbench.cli.main import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """Run `risbench train ARGV` (default: this process's arguments); returns the exit code."""
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
