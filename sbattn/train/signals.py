"""The signals a training run obeys: Ctrl-C and SIGTERM stop it at a step's end (a torchrun worker's SIGTERM
also comes from the kernel when its agent dies, see agent.py), and a suite's ALONE_SIGNAL hands it every core when
it is the last run still training (experiments/jobs.py sends it)."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any, Iterator

from ..system import available_cores
from .agent import agent_gone, followed_agent
from .threads import set_ceiling

__all__ = ["StopRequest", "ALONE_SIGNAL", "ALONE_THREADS", "alone_signal_handled"]

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
