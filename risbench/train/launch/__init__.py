"""`torchrun --standalone --nproc-per-node K -m risbench.train.launch CONFIG [--set k=v ...] [--run-dir DIR]`:
the same as `risbench train`, as a module torchrun can start (every rank runs it; rank 0 writes).
(A package with a `__main__`, so that `risbench.train`'s import-everything `__init__` does not import the
module that `-m` then executes.)"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from risbench.cli.main import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])
