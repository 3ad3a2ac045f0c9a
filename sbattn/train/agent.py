"""The torchrun agent that started this process, and what its workers do when it dies.

torchrun starts each worker in a session of its own, so a `kill -9` of the agent (or of its process group) leaves
the workers running: training, holding the run's lock, writing checkpoints. On Linux a worker asks the kernel for
a SIGTERM when its agent dies (PR_SET_PDEATHSIG) and takes the SIGTERM path every stop takes: the ranks agree on a
step, rank 0 checkpoints and releases the lock, every rank exits 130.

The kernel sends that signal when the *thread* that started the worker ends, not the process: torch's agent
starts (and restarts) its workers from its main thread, which lives as long as the agent does. A launcher that
started workers from a short-lived thread would have them stopped early; the request is made only under torchrun's
elastic agent (TORCHELASTIC_RUN_ID in the environment), whose behaviour this relies on.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

from ..errors import UserError

__all__ = ["agent_pid", "follow_agent", "followed_agent", "agent_gone", "PR_SET_PDEATHSIG"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# This process's parent when its training code was imported (this module, before any rank meets another): under
# torchrun, the agent. follow_agent's check catches an agent that died between then and the kernel's taking the
# request; one that died before it is not known here (the worker, holding nothing, gives up at its rendezvous).
_STARTED_BY = os.getppid()
_followed: int | None = None  # the agent whose death this process is signalled, once follow_agent has asked


def agent_pid() -> int | None:
    """The pid of the torchrun agent that started this process; None when torchrun's agent did not."""
    return _STARTED_BY if "TORCHELASTIC_RUN_ID" in os.environ else None


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
