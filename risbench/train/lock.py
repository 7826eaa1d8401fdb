"""One writer per run: `run_lock(run_dir)` holds an exclusive lock on run_dir/.lock while a process trains
the run (or moves its stale outputs away).

The lock is an flock(2) on the file, so the kernel releases it when its holder dies, SIGKILL included:
a lock left by a dead process never blocks anyone. The file names its holder (pid, host, start time,
command), for the message another process prints. Within one process the lock is re-entrant (the sweep
takes it around `train_run`, which takes it too).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from risbench.errors import RisbenchError

LOCK_FILE = ".lock"
_HELD: dict[str, list[int]] = {}  # lock path -> [fd, depth] held by this process


class RunLocked(RisbenchError):
    """Another live process holds the run's lock."""


def holder(run_dir: Path) -> dict:
    """Who holds (or last held) the lock of `run_dir`: {pid, host, since, command}, {} if unknown."""
    try:
        data = json.loads((Path(run_dir) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock for the block; RunLocked (naming the holder) when a live process has it."""
    run_dir = Path(run_dir)
    path = str((run_dir / LOCK_FILE).resolve())
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        h = holder(run_dir)
        raise RunLocked(
            f"{run_dir} is being trained by pid {h.get('pid', '?')} on {h.get('host', '?')} since "
            f"{h.get('since', '?')} ({h.get('command', '?')}); wait for it to finish, or stop that process"
        ) from None
    info = {
        "pid": os.getpid(),
        "host": platform.node(),
        "since": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": shlex.join(["risbench", *sys.argv[1:]]),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[path]
        os.close(fd)  # releases the flock; the file stays (removing it would race with a new holder)


def held_by_other(run_dir: Path) -> dict | None:
    """The holder of the run's lock when a live process other than this one holds it, else None."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file() or str(path.resolve()) in _HELD:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder(run_dir) or {"pid": "?"}
    finally:
        os.close(fd)
    return None
