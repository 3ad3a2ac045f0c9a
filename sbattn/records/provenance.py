"""Where a run's numbers come from: the code (sbattn's version and commit), the software (PyTorch, Python), the
machine (the device's name), the command line and the times, recorded in the run's JSON and checkpoint."""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch

from ..system import cpu_model
from ..version import __version__

__all__ = ["collect", "git_commit", "device_name", "now_iso", "torchrun_job"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def now_iso() -> str:
    return datetime.now().isoformat(timespec="seconds")


def collect(device: torch.device, processes: int = 1) -> dict:
    """This process's provenance, taken when its run starts."""
    commit, modified = git_commit() or (None, None)
    job = torchrun_job()
    # str(): torch.__version__ is a str subclass, which weights_only loading of the checkpoint refuses
    return {"sbattn": __version__, "commit": commit, "modified": modified, "torch": str(torch.__version__),
            "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
            "device_name": device_name(device), "processes": processes,
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv)), "cwd": os.getcwd(), "started": now_iso(),
            **({"torchrun_job": job} if job is not None else {})}


def torchrun_job() -> str | None:
    """The torchrun job this process is a worker of (its rendezvous id, TORCHELASTIC_RUN_ID); None outside one."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def git_commit(package_dir: Path = PACKAGE_DIR) -> tuple[str, bool] | None:
    """(commit, whether the package's files differ from it) when the package runs from a git checkout that tracks
    it; None otherwise (installed from a wheel, no git, a checkout of something else around it). Never fails."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True, timeout=10)
    try:
        if git("ls-files", "--error-unmatch", "version.py").returncode != 0:
            return None
        head, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or status.returncode != 0:
        return None
    return head.stdout.strip(), bool(status.stdout.strip())


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU's (an MPS device is the Apple chip's GPU)."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):  # a driver that cannot tell: the run goes on without the name
        return "unknown CUDA device"
    return f"{cpu_model()} (MPS)" if device.type == "mps" else cpu_model()
