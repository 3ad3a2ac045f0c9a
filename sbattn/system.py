"""What this machine offers: cores this process may use, and the CPU's bf16 support."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_cores", "thread_budget", "cpu_has_bf16"]


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


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX-512 BF16 or AMX); without it bf16 autocast is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
