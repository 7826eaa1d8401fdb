"""Ctrl-C and SIGTERM during training: the loop finishes its step, saves checkpoints/last.pt and stops
with `TrainingInterrupted` (the CLI prints one line saying how to resume). A second signal acts at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as a shell reports it


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving its checkpoint; running the same command resumes it."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path) -> None:
        super().__init__(f"{signal_name} at step {step}: saved {checkpoint}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, Path(checkpoint)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal_name, 1)


@dataclass
class StopRequest:
    """Set by the signal handler: the name of the first stop signal received, or None."""

    signal_name: str | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT / SIGTERM only record a stop request (the previous handlers come back on
    the first one, so a second signal interrupts at once). Outside the main thread, nothing is installed."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signum: int, frame: object) -> None:
        request.signal_name = signal.Signals(signum).name
        for s, h in previous.items():
            signal.signal(s, h)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
