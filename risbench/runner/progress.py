"""The sweep's progress view: runs done / running / left, with an estimate of the time left.

Each running run's step and loss are read from its train_log.jsonl. A rich live view on a terminal; plain
lines when stdout is not a TTY or CI=true."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def read_last_log(path: Path, max_bytes: int = 8192) -> dict[str, Any] | None:
    """The last complete JSON line of a train_log.jsonl (None if there is none yet)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            return rec
    return None


def _first(rec: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if isinstance(rec.get(key), (int, float)) and not isinstance(rec.get(key), bool):
            return rec[key]
    return None


@dataclass
class Active:
    run_id: str
    run_dir: Path
    started: float
    where: str = ""  # "cpu" or "gpu 3"
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    fraction: float | None = None
    budget_s: float | None = None  # train.max_minutes, when the run has a time budget

    def poll(self) -> None:
        rec = read_last_log(self.run_dir / "train_log.jsonl")
        if not rec:
            return
        step = _first(rec, "step", "global_step", "iter")
        total = _first(rec, "total_steps", "max_steps", "steps")
        loss = _first(rec, "loss", "train_loss")
        self.step = int(step) if step is not None else self.step
        self.total = int(total) if total is not None else self.total
        self.loss = float(loss) if loss is not None else self.loss
        frac = _first(rec, "progress", "fraction")
        if frac is None and self.step is not None and self.total:
            frac = self.step / self.total
        seconds = _first(rec, "train_seconds")
        if self.budget_s and seconds is not None:
            frac = max(frac or 0.0, float(seconds) / self.budget_s)
        if frac is not None:
            self.fraction = max(0.0, min(1.0, float(frac)))


def plain_output() -> bool:
    return not sys.stdout.isatty() or os.environ.get("CI", "").lower() in ("1", "true", "yes")


class SweepProgress:
    """Tracks a sweep; use as a context manager around the runs."""

    def __init__(
        self,
        title: str,
        total: int,
        done: int = 0,
        plain: bool | None = None,
        console: Console | None = None,
        interval: float = 1.0,
        plain_every: float = 30.0,
    ) -> None:
        self.title = title
        self.total = total
        self.done = done
        self.skipped = done
        self.failed = 0
        self.plain = plain_output() if plain is None else plain
        self.console = console or Console()
        self.interval = interval
        self.plain_every = plain_every
        self.active: dict[str, Active] = {}
        self.durations: list[float] = []
        self.started = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._last_plain = 0.0

    # ---- public API
    def start_run(
        self,
        run_id: str,
        run_dir: Path,
        where: str = "cpu",
        total_steps: int | None = None,
        budget_s: float | None = None,
    ) -> None:
        with self._lock:
            self.active[run_id] = Active(
                run_id, Path(run_dir), time.time(), where, total=total_steps, budget_s=budget_s
            )
        self._say(f"[{self.done + len(self.active)}/{self.total}] start {run_id} ({where})")

    def finish_run(self, run_id: str, ok: bool = True, note: str = "") -> None:
        with self._lock:
            act = self.active.pop(run_id, None)
            took = time.time() - act.started if act else 0.0
            if ok:
                self.done += 1
                self.durations.append(took)
            else:
                self.failed += 1
        status = "done" if ok else "FAILED"
        self._say(
            f"[{self.done}/{self.total}] {status} {run_id} in {fmt_seconds(took)}" + (f": {note}" if note else "")
        )

    def eta(self) -> float | None:
        """Seconds left: the running runs' own progress, the others at the mean run time seen so far."""
        with self._lock:
            active = list(self.active.values())
            per_run = sum(self.durations) / len(self.durations) if self.durations else None
            left = self.total - self.done - self.failed - len(active)
        now = time.time()
        remaining_active = []
        for act in active:
            if act.fraction and act.fraction > 0.02:
                est = (now - act.started) / act.fraction
                per_run = per_run if per_run is not None else est
                remaining_active.append(max(0.0, est - (now - act.started)))
            elif per_run is not None:
                remaining_active.append(max(0.0, per_run - (now - act.started)))
            else:
                return None
        if per_run is None:
            return None if left > 0 else (max(remaining_active) if remaining_active else 0.0)
        slots = max(1, len(active))
        return (max(remaining_active) if remaining_active else 0.0) + per_run * left / slots

    # ---- rendering
    def summary(self) -> str:
        with self._lock:
            running = len(self.active)
        left = self.total - self.done - self.failed - running
        text = f"{self.done} done · {running} running · {left} left"
        if self.failed:
            text += f" · {self.failed} failed"
        return text + f" · elapsed {fmt_seconds(time.time() - self.started)} · ETA {fmt_seconds(self.eta())}"

    def _renderable(self) -> Group:
        table = Table(box=None, show_header=True, header_style="bold")
        for col in ("run", "on", "step", "loss", "elapsed"):
            table.add_column(col)
        with self._lock:
            active = list(self.active.values())
        for act in active:
            step = "?" if act.step is None else (f"{act.step}/{act.total}" if act.total else str(act.step))
            loss = "" if act.loss is None else f"{act.loss:.4f}"
            table.add_row(act.run_id, act.where, step, loss, fmt_seconds(time.time() - act.started))
        return Group(Text(f"{self.title}: {self.summary()}", style="bold"), table)

    def _say(self, line: str) -> None:
        if self.plain or self._live is None:
            print(line, flush=True)
        else:
            self._live.console.print(line)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                active = list(self.active.values())
            for act in active:
                act.poll()
            if self.plain:
                if time.time() - self._last_plain >= self.plain_every and active:
                    self._last_plain = time.time()
                    for act in active:
                        loss = "" if act.loss is None else f" loss {act.loss:.4f}"
                        step = "" if act.step is None else f" step {act.step}" + (f"/{act.total}" if act.total else "")
                        print(f"  {act.run_id}:{step}{loss}", flush=True)
                    print(f"  {self.summary()}", flush=True)
            elif self._live is not None:
                self._live.update(self._renderable())

    def __enter__(self) -> SweepProgress:
        self.started = time.time()
        self._last_plain = time.time()
        if not self.plain:
            self._live = Live(self._renderable(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        else:
            print(f"{self.title}: {self.total} runs, {self.done} already done", flush=True)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._live is not None:
            self._live.update(self._renderable())
            self._live.__exit__(*exc)
            self._live = None
        else:
            print(f"{self.title}: {self.summary()}", flush=True)
