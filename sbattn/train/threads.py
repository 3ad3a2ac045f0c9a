"""Intra-op threads for a CPU run on a machine it may share.

OpenMP's threads meet at a barrier after every operation. When another process holds one of the cores, the
thread that lost it holds every barrier up until the scheduler gives it back, and a two-thread run on two cores
beside one busy process fell from about 1,300 to 44 images/s (benchmarks/contention.py). A run should use no
more threads than the cores others leave it: the governor measures, every few seconds and from the host alone
(no device sync), how much CPU time other processes took, and sets the thread count to the cores left, between
one and the run's ceiling. The ceiling is the thread count the run started with (the user's OMP_NUM_THREADS or
torch.set_num_threads, else PyTorch's default), or what a suite hands its last run (signals.ALONE_SIGNAL).
"""
from __future__ import annotations

import os
import time

import torch

__all__ = ["ThreadGovernor", "set_ceiling", "pinned_threads"]

_ceiling: int | None = None  # set when a suite hands the run more cores; None: what the run started with
_pinned = False  # a run whose thread count is fixed (--threads N, the reference's arithmetic): nothing changes it


def set_ceiling(threads: int) -> None:
    """From now on the run may use up to `threads` threads (and uses them while the cores are free); nothing for a
    run whose count is pinned."""
    global _ceiling
    if _pinned:
        return
    _ceiling = max(1, threads)
    torch.set_num_threads(_ceiling)


def pinned_threads(threads: str, reference_arithmetic: bool) -> int | None:
    """The thread count a run keeps from start to end, or None for a governed run: --threads N; in the reference's
    arithmetic, the count it starts with (what the reference's own run uses: a count changed mid-run sums in
    another order, and the run is no longer the reference's bit for bit)."""
    if threads != "auto":
        return int(threads)
    return torch.get_num_threads() if reference_arithmetic else None


def _cores() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def _busy_core_seconds(cores: set[int]) -> float | None:
    """CPU time spent on `cores` by every process (steal included), in core-seconds; None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
    except OSError:
        return None
    busy = 0
    for name, *fields in lines:
        if int(name[3:]) in cores:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in (fields + ["0"] * 8)[:8])
            busy += user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")


def _own_core_seconds() -> float:
    t = os.times()
    return t.user + t.system


class ThreadGovernor:
    """Call poll(now) from the step loop; every `interval` seconds it resets the thread count to the cores
    other processes leave free. Inert on devices other than the CPU and where /proc/stat is missing."""

    def __init__(self, device: torch.device, pinned: int | None = None, interval: float = 2.0):
        """pinned: a thread count for the whole run (the governor off, a suite's raise ignored); None: governed."""
        global _pinned
        _pinned = pinned is not None
        if pinned is not None:
            torch.set_num_threads(pinned)
        self.cores = _cores()
        self.interval = interval
        self.start_threads = torch.get_num_threads()
        self._mark = self._sample(time.perf_counter()) if device.type == "cpu" and pinned is None else None
        self.enabled = self._mark is not None

    def _sample(self, now: float) -> tuple[float, float, float] | None:
        busy = _busy_core_seconds(self.cores)
        return None if busy is None else (now, busy, _own_core_seconds())

    @property
    def ceiling(self) -> int:
        return _ceiling or self.start_threads

    def poll(self, now: float) -> None:
        then = self._mark
        if not self.enabled or then is None or now - then[0] < self.interval:
            return
        mark = self._sample(now)
        if mark is None:  # /proc/stat unreadable since the last poll: inert from now on, as where it is missing
            self.enabled, self._mark = False, None
            return
        self._mark = mark
        wall = mark[0] - then[0]
        others = max(0.0, (mark[1] - then[1]) - (mark[2] - then[2])) / wall  # cores other processes used
        threads = max(1, min(self.ceiling, len(self.cores) - round(others)))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
