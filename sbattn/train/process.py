"""A training process and its host: the signals it obeys, its threads, the torchrun agent above it.

The signals a training run obeys: Ctrl-C and SIGTERM stop it at a step's end (a torchrun worker's SIGTERM
also comes from the kernel when its agent dies, see below), and a suite's ALONE_SIGNAL hands it every core when
it is the last run still training (experiments/jobs.py sends it).

The thread governor: intra-op threads for a CPU run on a machine it may share.

OpenMP's threads meet at a barrier after every operation. When another process holds one of the cores, the
thread that lost it holds every barrier up until the scheduler gives it back, and a two-thread run on two cores
beside one busy process fell from about 1,300 to 44 images/s (benchmarks/contention.py). A run should use no
more threads than the cores others leave it: the governor measures, every few seconds and from the host alone
(no device sync), how much CPU time other processes took, and sets the thread count to the cores left, between
one and the run's ceiling. The ceiling is the thread count the run started with (the user's OMP_NUM_THREADS or
torch.set_num_threads, else PyTorch's default), or what a suite hands its last run (ALONE_SIGNAL).

The torchrun agent that started this process, and what its workers do when it dies.

torchrun starts each worker in a session of its own, so a `kill -9` of the agent (or of its process group) leaves
the workers running: training, holding the run's lock, writing checkpoints. On Linux a worker asks the kernel for
a SIGTERM when its agent dies (PR_SET_PDEATHSIG) and takes the SIGTERM path every stop takes: the ranks agree on a
step, rank 0 checkpoints and releases the lock, every rank exits 130.

The kernel sends that signal when the *thread* that started the worker ends, not the process: torch's agent
starts (and restarts) its workers from its main thread, which lives as long as the agent does. A launcher that
started workers from a short-lived thread would have them stopped early; the request is made only under torchrun's
elastic agent (TORCHELASTIC_RUN_ID in the environment), whose behaviour this relies on.

The torchrun command that started this process, up to its training script: so that the resume command a rank
prints is the user's own launch (its rendezvous, node and restart flags) rather than a guess at it.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Iterator

import torch

from ..errors import UserError
from ..records.provenance import torchrun_job
from ..system import available_cores

__all__ = ["StopRequest", "ALONE_SIGNAL", "ALONE_THREADS", "alone_signal_handled", "ThreadGovernor", "set_ceiling",
           "pinned_threads", "agent_pid", "follow_agent", "followed_agent", "agent_gone", "PR_SET_PDEATHSIG",
           "launcher_argv", "remember_launch"]


# Sent to the last CPU run still training: from then on it uses the threads a lone run gets (ALONE_THREADS, set
# by the suite). Blocked in the run from its start until its handler is installed, so that one sent early waits
# instead of killing the run. None where the platform has no such signal.
ALONE_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR1", None)
ALONE_THREADS = "SBATTN_ALONE_THREADS"


def _in_main_thread() -> bool:  # signal handlers live in the main thread
    return threading.current_thread() is threading.main_thread()


# Ctrl-C, SIGTERM, and SIGHUP (the terminal or ssh session that started the run closed): each a stop at a step's end
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class StopRequest:
    """Turns SIGINT, SIGTERM and SIGHUP into a flag the step loop checks, so a step is never cut in half.

    A second Ctrl-C (SIGINT) stops at once, without a checkpoint; a repeated SIGTERM asks the same as the first:
    the kernel sends a torchrun worker one for each thread of its dying agent (the worker passes from thread to
    thread as they exit), and a supervisor may repeat its request before its SIGKILL. After a stop, SIGTERM and
    SIGHUP stay ignored where nothing else handled them, so that the process ends with 130 whatever comes.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        if self.signal is None:
            return "stop on another rank"
        if self.signal == signal.SIGTERM and agent_gone():
            return f"SIGTERM (the torchrun agent that started this process, pid {followed_agent()}, is gone)"
        return signal.Signals(self.signal).name

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        previous: dict[signal.Signals, Any] = {}
        if _in_main_thread():
            def handler(signum: int, frame: FrameType | None) -> None:
                if self.signal is None:
                    self.signal = signum
                elif signum == signal.SIGINT:  # a second Ctrl-C: stop now
                    raise KeyboardInterrupt
            previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, h in previous.items():
                # A stopped run's process is on its way out with 130 (its checkpoint written): a repeated SIGTERM or
                # SIGHUP that nothing else handles must not turn that into a death by the signal (143).
                after_stop = self.signal is not None and s != signal.SIGINT and h in (signal.SIG_DFL, None)
                signal.signal(s, signal.SIG_IGN if after_stop else h)


def _train_alone(signum: int, frame: FrameType | None) -> None:
    set_ceiling(int(os.environ.get(ALONE_THREADS, available_cores())))


@contextlib.contextmanager
def alone_signal_handled() -> Iterator[None]:
    """In a training run: on ALONE_SIGNAL, take the lone run's threads from the next operation on.

    In a suite's run, where the signal comes blocked, it is ignored afterwards: one that comes as the run
    finishes must not kill it.
    """
    if ALONE_SIGNAL is None or not _in_main_thread():
        yield
        return
    previous = signal.signal(ALONE_SIGNAL, _train_alone)
    from_suite = ALONE_SIGNAL in signal.pthread_sigmask(signal.SIG_UNBLOCK, {ALONE_SIGNAL})
    try:
        yield
    finally:
        signal.signal(ALONE_SIGNAL, signal.SIG_IGN if from_suite else previous)


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


def pinned_threads(threads: str, keep_start_count: bool) -> int | None:
    """The thread count a run keeps from start to end, or None for a governed run: --threads N; else, where the
    run must keep it (Run.start says why), the count it starts with."""
    if threads != "auto":
        return int(threads)
    return torch.get_num_threads() if keep_start_count else None


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

    def release(self) -> None:
        """The run has ended: back to the ceiling, so that the next run of this process (a suite's) starts from
        it, not from this run's last governed count (measured: a suite's run that started after one governed
        down to 1 thread took 1 as its ceiling and trained on one core of an idle machine)."""
        if self.enabled and torch.get_num_threads() != self.ceiling:
            torch.set_num_threads(self.ceiling)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# This process's parent when its training code was imported (this module, before any rank meets another): under
# torchrun, the agent. follow_agent's check catches an agent that died between then and the kernel's taking the
# request; one that died before it is not known here (the worker, holding nothing, gives up at its rendezvous).
_STARTED_BY = os.getppid()
_followed: int | None = None  # the agent whose death this process is signalled, once follow_agent has asked


def agent_pid() -> int | None:
    """The pid of the torchrun agent that started this process; None when torchrun's agent did not."""
    return _STARTED_BY if torchrun_job() is not None else None


def follow_agent() -> int | None:
    """Under torchrun on Linux, have the kernel send this process SIGTERM when its agent dies, and return the
    agent's pid; None elsewhere (outside torchrun, or where the kernel offers no such request). Raises UserError
    when the agent has died already: nothing may start then, no rank can meet the others through its store."""
    global _followed
    agent = agent_pid()
    if agent is None:
        return None
    armed = _ask_for_a_signal_at_parent_death(signal.SIGTERM)
    if os.getppid() != agent:  # died before the request: the kernel will send nothing
        rank = os.environ.get("RANK", "?")
        raise UserError(f"rank {rank}: the torchrun agent that started this process (pid {agent}) has gone "
                        f"(killed?): nothing was trained; start the job again")
    if armed:
        _followed = agent
    return _followed


def followed_agent() -> int | None:
    """The agent whose death stops this process (follow_agent made the request), else None."""
    return _followed


def agent_gone() -> bool:
    """Whether the agent this process follows has died (its parent is now another process)."""
    return _followed is not None and os.getppid() != _followed


def _ask_for_a_signal_at_parent_death(signum: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, signum) through the C library; False where there is none (not Linux) or it fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return bool(prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)


_LAUNCHERS = ("torchrun", "torch.distributed.run", "torch.distributed.launch")


def launcher_argv(cmdline: list[str] | None = None) -> list[str] | None:
    """The torchrun agent's arguments before its training script (`torchrun --nnodes=2 ... -m`), the launcher
    spelled `torchrun`; None when this process was not started by torchrun, or its command cannot be read (not
    Linux, a launcher of another kind)."""
    if cmdline is None:
        cmdline = _parent_cmdline()
    if not cmdline:
        return None
    for i, word in enumerate(cmdline):
        if Path(word).name == "torchrun" or (word in _LAUNCHERS and i > 0 and cmdline[i - 1] == "-m"):
            options = cmdline[i + 1:]
            break
    else:
        return None
    from torch.distributed.run import get_args_parser  # the launcher's own grammar: where its script begins
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # not the launcher's usage text in the run's error
            parsed = get_args_parser().parse_args(options)
    except SystemExit:
        return None
    script = len(options) - len(parsed.training_script_args) - 1
    if script < 0 or options[script] != parsed.training_script:
        return None
    return ["torchrun", *options[:script]]


_remembered: list[str] | None = None  # the agent's command line, read while it lived (remember_launch)


def remember_launch() -> None:
    """Read the torchrun agent's command line now, while it lives: a worker whose agent was killed checkpoints
    and prints its resume command after the agent is gone, its parent then another process."""
    global _remembered
    _remembered = _parent_cmdline()


def _parent_cmdline() -> list[str] | None:
    if _remembered is not None:
        return _remembered
    try:
        blob = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return [word.decode(errors="replace") for word in blob.split(b"\0") if word] or None
