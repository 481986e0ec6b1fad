"""Hardware and software fingerprint stored with every run (and compared by the report)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch


def cpuinfo(field_name: str) -> str | None:
    """The first ``field_name`` line of /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field_name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return r.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def fingerprint(device: torch.device | None = None) -> dict:
    gpu = None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        gpu = torch.cuda.get_device_name(device if device is not None else 0)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "ale_py": _version("ale-py"),
        "pufferlib": _version("pufferlib"),
        "gymnasium": _version("gymnasium"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def hardware_key(fp: dict) -> str:
    """What must match for wall-clock numbers to be pooled: CPU model, core share, GPU."""
    return f"{fp.get('cpu')} x{fp.get('cores_allowed') or fp.get('cores')} | gpu={fp.get('gpu')}"
