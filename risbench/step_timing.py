"""Per-phase timing of steps for `risbench bench`: data, forward, backward, optimizer.

On CUDA each phase boundary records a `torch.cuda.Event` on the current stream (no host sync inside the
timed steps); durations are read after one synchronisation at the end, so a phase's time is how long the
GPU's timeline took between two marks. A step's time is from its start mark to the next step's start mark
(the last step: to a mark after it), so waiting for the host (a slow input pipeline, a host sync) counts
in the step where it happens: the data phase is then the time the GPU waited for the batch. On CPU the
marks are `time.perf_counter()` (CPU ops run synchronously).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

PHASES = ("data", "forward", "backward", "optimizer")


class PhaseClock:
    """Marks of the steps of a timed window: `start()` at each step's start, `mark(phase)` after a phase."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.steps: list[list[tuple[str, Any]]] = []
        self.end: Any = None

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _seconds(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a

    def start(self) -> None:
        """A step begins."""
        self.steps.append([("start", self._now())])

    def mark(self, phase: str) -> None:
        """`phase` of the current step has ended."""
        self.steps[-1].append((phase, self._now()))

    def finish(self) -> list[dict[str, float]]:
        """Close the window; per step: seconds of each marked phase, 'total' and 'other' (unmarked time)."""
        self.end = self._now()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        out = []
        for i, marks in enumerate(self.steps):
            stop = self.steps[i + 1][0][1] if i + 1 < len(self.steps) else self.end
            row = {name: self._seconds(marks[j - 1][1], t) for j, (name, t) in enumerate(marks) if j}
            row["total"] = self._seconds(marks[0][1], stop)
            row["other"] = max(0.0, row["total"] - sum(row[p] for p in PHASES if p in row))
            out.append(row)
        return out


def time_phased(
    step: Callable[[PhaseClock], Any],
    device: torch.device,
    steps: int,
    warmup: int,
    on_step: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, float]]:
    """Run `step(clock)` `warmup` times untimed, then `steps` times in one timed window; the per-step rows of
    `PhaseClock.finish`. `step` calls `clock.start()` first and `clock.mark(phase)` after each phase."""
    report = on_step or (lambda phase, done, total: None)
    idle = PhaseClock(device)
    for i in range(warmup):
        step(idle)
        report("warm-up", i + 1, warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    clock = PhaseClock(device)
    for i in range(steps):
        step(clock)
        report("timed", i + 1, steps)
    return clock.finish()


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Median and mean step seconds, and each phase's share of the summed step time."""
    totals = [r["total"] for r in rows]
    whole = sum(totals) or 1e-12
    names = [p for p in (*PHASES, "other") if any(p in r for r in rows)]
    return {
        "s_per_step_median": statistics.median(totals),
        "s_per_step_mean": statistics.fmean(totals),
        "phase_share": {p: sum(r.get(p, 0.0) for r in rows) / whole for p in names},
        "phase_ms_mean": {p: 1000 * statistics.fmean(r.get(p, 0.0) for r in rows) for p in names},
    }
