"""What this machine offers: cores this process may use, the CPU's bf16 support, optional packages."""
from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

__all__ = ["available_cores", "thread_budget", "cpu_has_bf16", "cpu_model", "cpu_matrix_isa", "TENSORBOARD_HINT",
           "tensorboard_available"]

TENSORBOARD_HINT = 'pip install "sbattn[tensorboard]"'


def available_cores() -> int:
    """Cores this process may run on (its affinity where the platform tells, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_budget() -> int:
    """The threads this process's CPU work may use in all: the user's OMP_NUM_THREADS when set, else every core
    it may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return available_cores()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 9B14", ...), else what the platform says."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_matrix_isa() -> str:
    """The fastest bf16 matrix instructions this CPU has: "amx_bf16", "avx512_bf16", or "none"."""
    flags = _cpuinfo()
    return next((isa for isa in ("amx_bf16", "avx512_bf16") if isa in flags), "none")


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX-512 BF16 or AMX); without it bf16 autocast is slower than fp32."""
    return cpu_matrix_isa() != "none"


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None
