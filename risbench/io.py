"""Files and provenance: atomic writes (temporary file + rename) and where a result came from
(git commit, package versions, device). The one place risbench reads git or writes a file atomically."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from risbench.config import PROJECT_ROOT
from risbench.errors import RisbenchError

PACKAGES = ("risbench", "torch", "transformers", "fvcore", "tokenizers", "sentencepiece", "numpy")


def atomic_write_path(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temporary file next to `path`, then rename it over `path`, so a reader
    (or a run killed mid-write, or ranks racing) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(file_object)` on a temporary file next to `path` (flushed and fsynced), then rename it."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_path(path, to_file)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON (no NaN) to `path` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def check_writable(path: Path, what: str = "output folder") -> None:
    """Fail before any computation when `path` (a folder, existing or to be created) cannot be written:
    the nearest existing folder on its way must be writable by this process (a read-only mount too)."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RisbenchError(f"{what} {path}: {probe} is a file, not a folder; choose another path")
    effective = os.access in os.supports_effective_ids
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=effective):
        where = "" if probe == path else f" ({probe} is where it would be created)"
        raise RisbenchError(f"{what} {path} is not writable{where}; choose a writable path or fix its permissions")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info() -> dict[str, Any]:
    """{commit, dirty} of the project checkout (None when it is not a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def git_text() -> str:
    """The commit as one line for a provenance text: 'abc123... (with uncommitted changes)' or 'unknown'."""
    info = git_info()
    return (info["commit"] or "unknown") + (" (with uncommitted changes)" if info["dirty"] else "")


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a number depends on, and of python."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def device_info(device: torch.device) -> dict[str, Any]:
    """The device a number was measured on (GPU name and count, or CPU and threads)."""
    if device.type == "cuda":
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    return {
        "type": "cpu",
        "name": platform.processor() or platform.machine(),
        "model": cpu_model(),
        # the kernels torch dispatches to (AVX2, AVX512, ...) and the thread count both decide the order of
        # floating-point reductions: the same seed gives the same metrics only where these match
        "capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "kernel": platform.release(),
    }


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo), None where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def provenance(device: torch.device, world_size: int, seed: int) -> dict[str, Any]:
    """Where a result came from: code version, packages, device, process count, seed, host."""
    return {
        "git": git_info(),
        "versions": package_versions(),
        "device": device_info(device),
        "world_size": world_size,
        "seed": seed,
        "host": platform.node(),
    }
