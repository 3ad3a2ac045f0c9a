"""What this machine offers: cores this process may use, the CPU's bf16 support, and the CPU's name."""
from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["available_cores", "cpu_has_bf16", "cpu_model"]


def available_cores() -> int:
    """Cores this process may run on (its affinity where the platform tells, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX-512 BF16 or AMX); without it bf16 autocast is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_model() -> str:
    """The CPU's name: its model name on Linux, else what the platform calls the processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
