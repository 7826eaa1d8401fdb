"""Progress output of the training loop: a rich progress bar with loss and throughput, or plain log lines
(`--quiet`, CI=true, or stderr not a terminal); rank 0 only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def use_quiet(quiet: bool | None) -> bool:
    """Plain log lines instead of progress bars: asked for, on CI, or when stderr is not a terminal."""
    if quiet:
        return True
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return True
    return not sys.stderr.isatty()


class Progress:
    """rich progress bar with loss and throughput, or plain log lines in quiet mode (rank 0 only)."""

    def __init__(self, total: int, enabled: bool, quiet: bool) -> None:
        self.enabled = enabled
        self.quiet = quiet
        self.bar = None
        if enabled and not quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, info="")
            self.bar.start()

    def update(self, step: int, record: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            info = ""
            if record:
                info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['samples_per_s']:.1f} img/s"
            self.bar.update(self.task, completed=step, **({"info": info} if record else {}))
        elif record:
            terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("loss", "acc")))
            print(
                f"step {record['step']} epoch {record['epoch']} {terms} lr {record['lr']:.3e} "
                f"{record['samples_per_s']:.1f} img/s {record['s_per_step']:.3f} s/step",
                flush=True,
            )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(x + "\n" for x in keep))
