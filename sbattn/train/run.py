"""One process's training of a run: what stays fixed through it (the configuration, where it trains and in which
precision, how it reports, the thread governor), what it returns, and the command that resumes it."""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import console
from ..config import TrainConfig
from ..files import as_argument
from ..records import RunPaths, provenance
from ..system import keep_freed_memory
from . import distributed
from .agent import agent_pid
from .launcher import launcher_argv
from .precision import resolve_precision, use_true_fp32
from .threads import ThreadGovernor, pinned_threads

__all__ = ["Run", "RunResult", "resume_command"]


@dataclass
class RunResult:
    """What train() returns: the exit status (0 finished, 130 interrupted), the run's paths, its history, and the
    finished run's summary (empty when interrupted, and under torchrun on every rank but 0)."""

    exit_code: int
    paths: RunPaths
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """What stays fixed through a run: its configuration, where it trains, and how it reports."""

    config: TrainConfig
    ctx: distributed.Context
    device: torch.device
    paths: RunPaths
    amp_dtype: torch.dtype | None  # the precision asked for, resolved for this device
    log: Callable[..., None]
    interactive: bool  # a progress bar on a terminal
    threads: ThreadGovernor
    provenance: dict  # this process's (rank 0's; empty on the others), see records/provenance.py
    step_maker: Callable[..., Callable] | None = None  # in place of step.make_step: a fused group's (fused.py)

    @classmethod
    def start(cls, config: TrainConfig, ctx: distributed.Context, device_name: str, quiet: bool,
              log: Callable[[str], None] | None = None) -> "Run":
        """This process's run of `config` on `device_name`; rank 0 alone reports unless quiet, on standard output or
        through `log` (one of several runs in one process: its lines go to its own log file)."""
        quiet = quiet or not ctx.main
        paths = RunPaths.of(config)
        if log is None:
            log = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, flush=True))
            if ctx.main:
                console.log_to(paths.log)  # where its words go if standard output or error is lost
        device = torch.device(device_name)
        if device.type == "cpu":
            keep_freed_memory()  # the step's large activations reused, not mapped afresh each step
        amp_dtype = resolve_precision(config.precision, device)
        if amp_dtype is None:
            use_true_fp32(device)
        pinned = pinned_threads(config.threads, config.rng == "reference" and amp_dtype is None)
        if pinned is not None and device.type == "cpu":
            why = "--threads" if config.threads != "auto" else "the reference's arithmetic"
            log(f"{pinned} CPU thread(s) for the whole run ({why}): the thread governor is off")
        return cls(config, ctx, device, paths, amp_dtype, log,
                   not quiet and console.interactive(), ThreadGovernor(device, pinned),
                   provenance.collect(device, ctx.world_size) if ctx.main else {})

    @property
    def resume_command(self) -> str:
        return resume_command(self.paths, self.ctx)


def resume_command(paths: RunPaths, ctx: distributed.Context = distributed.Context()) -> str:
    """The command that continues the run: its configuration file (written when it started) with --resume, under
    torchrun when it runs there, through the program the user started it with."""
    program = Path(sys.argv[0]).name
    if ctx.distributed or agent_pid() is not None:  # under torchrun, one process included
        launcher = launcher_argv() or ["torchrun", f"--nproc_per_node={ctx.world_size}"]
        prefix = [*launcher, *([] if launcher[-1] in ("-m", "--module") else ["-m"]), "sbattn", "train"]
    elif program == "example.py":  # the reference implementation's entry point
        prefix = ["python", "example.py", "main"]
    elif program == "__main__.py":
        prefix = ["python", "-m", "sbattn", "train"]
    else:
        prefix = ["sbattn", "train"]
    return shlex.join([*prefix, "--config", as_argument(paths.config), "--resume"])
