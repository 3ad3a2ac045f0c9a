"""The torchrun command that started this process, up to its training script: so that the resume command a rank
prints is the user's own launch (its rendezvous, node and restart flags) rather than a guess at it."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

__all__ = ["launcher_argv", "remember_launch"]

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
