"""Old name of `risbench.cli.launch` (`torchrun ... -m risbench.train.launch CONFIG`), kept for old launch lines.

The one import from train/ up into cli/ (tests/test_architecture.py, ALLOWED_UPWARD)."""

from __future__ import annotations

import sys

from risbench.cli.launch import main

if __name__ == "__main__":
    sys.exit(main())
