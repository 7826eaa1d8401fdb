"""Where a number came from: code version, packages, device, process count."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

import torch

from risbench.config import PROJECT_ROOT

PACKAGES = ("risbench", "torch", "transformers", "fvcore", "tokenizers", "sentencepiece", "numpy")


def git_info() -> dict[str, Any]:
    """{commit, dirty} of the project checkout (None when it is not a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def device_info(device: torch.device) -> dict[str, Any]:
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
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def provenance(device: torch.device, world_size: int, seed: int) -> dict[str, Any]:
    return {
        "git": git_info(),
        "versions": package_versions(),
        "device": device_info(device),
        "world_size": world_size,
        "seed": seed,
        "host": platform.node(),
    }
