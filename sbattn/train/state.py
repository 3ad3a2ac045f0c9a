"""A run: what stays fixed through one process's training of it (Run: the configuration, where it trains
and in which precision, how it reports, the thread governor), what changes (RunState: exactly what its checkpoint
holds, with its own save and restore), what train() returns, and the command that resumes it.

A run resumed from a checkpoint continues to the same history and weights as one never stopped, because
everything that decides the rest of the run is in its RunState: the weights, the optimiser's momenta, the
learning-rate schedule, the loss scaler, every rank's random streams, the history, and where in which epoch it
stood, with the sums of that epoch so far.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Callable

import torch
from torch import nn

from .. import console
from ..config import LAYOUTS, TrainConfig
from ..data.batches import augment_stream_seed
from ..errors import CheckpointError, SbattnError, UserError
from ..files import as_argument
from ..optim import Lookahead
from ..records import RunPaths, provenance
from ..records.checkpoint import load_checkpoint, save_checkpoint
from ..records.integrity import check_weights_fit, is_number
from ..system import keep_freed_memory
from ..version import __version__

from . import distributed
from .process import agent_pid, launcher_argv, ThreadGovernor, pinned_threads
from .step import make_optimization, resolve_precision, use_true_fp32

__all__ = ["RunState", "Run", "RunResult", "resume_command", "checkpoint_to_resume", "continued_by_torchrun"]


def _rng_state(generator: torch.Generator, global_state: torch.Tensor | None = None) -> dict:
    """The random state to save: the global generator's (`global_state` when given), the augmentation stream's,
    CUDA's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state() if global_state is None else global_state,
                             "augment": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class RunState:
    model: nn.Module  # the plain module (DDP and torch.compile wrap it, never replace it)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # this rank's augmentation stream
    seed: int
    num_classes: int
    layout: str  # the memory layout it trains in (a key of LAYOUTS), kept through resumes
    history: list[dict] = field(default_factory=list)
    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the epoch under way
    partial: dict | None = None  # the sums of the epoch under way, when stopped inside it (rank 0's: global)
    sessions: list[dict] = field(default_factory=list)  # provenance of each process that trained it, this one last
    data: dict = field(default_factory=dict)  # the identity of the data it trains on (integrity.data_identity)
    # The global generator's state where the epoch under way drew its batches from it (--rng reference draws an
    # epoch whole at its start): what a checkpoint inside the epoch saves, so that a resumed run draws it again.
    epoch_rng: torch.Tensor | None = None
    per_batch: bool = False  # the schedule steps after every optimiser step (else after every epoch)
    lookahead: Lookahead | None = None
    steps_per_epoch: int = 0
    # whether the run's checkpoint file holds an epoch's end (step 0): kept aside when one inside the next epoch
    # replaces it (RunPaths.epoch_checkpoint)
    checkpoint_at_epoch_end: bool = False

    @property
    def global_step(self) -> int:
        """Optimiser steps done in the whole run (every epoch before the last is whole)."""
        return self.epoch * self.steps_per_epoch + self.step

    @property
    def memory_format(self) -> torch.memory_format:
        return LAYOUTS[self.layout]

    @classmethod
    def start(cls, config: TrainConfig, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None,
              seed: int, num_classes: int, rank: int, layout: str, steps_per_epoch: int,
              provenance: dict | None = None) -> "RunState":
        """A run's state before its first step: the recipe's optimiser, schedule and lookahead on `model`."""
        made = make_optimization(model, config, steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        # Each rank augments with its own stream; rank 0's is the single-process run's.
        generator = torch.Generator(device).manual_seed(augment_stream_seed(seed, rank))
        return cls(model, made.optimizer, made.scheduler, scaler, generator, seed, num_classes, layout,
                   sessions=[provenance] if provenance else [], per_batch=made.per_batch, lookahead=made.lookahead,
                   steps_per_epoch=steps_per_epoch)

    def save(self, path: Path, config: TrainConfig, ctx: distributed.Context) -> None:
        """Write the checkpoint (rank 0); a collective, so every rank calls it."""
        inside = self.epoch_rng if self.step else None
        rng = distributed.gather_objects(ctx, _rng_state(self.generator, inside))
        if ctx.main:
            save_checkpoint(path, {
                "version": __version__, "config": config.to_dict(), "num_classes": self.num_classes,
                "world_size": ctx.world_size, "seed": self.seed, "layout": self.layout, "epoch": self.epoch,
                "step": self.step,
                "partial": self.partial, "history": self.history, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng, "provenance": self.sessions, "data": self.data,
                **({} if self.lookahead is None else {"lookahead": self.lookahead.state_dict()})})

    def restore(self, ckpt: dict, ctx: distributed.Context, path: Path, steps: int) -> str | None:
        """Continue from a checkpoint read by load_checkpoint (`steps`: the steps of an epoch of this run); whatever
        in it does not fit this run is a CheckpointError. Returns a note for the log, if any."""
        if ckpt["step"] >= steps:
            raise CheckpointError(f"{path}: its step {ckpt['step']} is past the {steps} steps of an epoch; the "
                                  f"file is damaged: move it away to start over")
        check_weights_fit(self.model, ckpt["model"], path, "this run's model")
        for name, part in (("model", self.model), ("optimizer", self.optimizer), ("scheduler", self.scheduler),
                           ("scaler", self.scaler)):
            with _restoring(name, path):
                part.load_state_dict(ckpt[name])
        if self.lookahead is not None:
            with _restoring("lookahead average", path):
                self.lookahead.load_state_dict(ckpt["lookahead"])
        self._check_schedule(ckpt["epoch"] * steps + ckpt["step"] if self.per_batch else ckpt["epoch"], path)
        self.history, self.epoch, self.step = ckpt["history"], ckpt["epoch"], ckpt["step"]
        self.sessions = [*ckpt["provenance"], *self.sessions]
        self.partial = ckpt["partial"] if ctx.main else None  # rank 0 carries the interrupted epoch's global sums
        # read_record refuses a checkpoint of a sealed format without its checksum; an older one is said to lack it
        notes = [] if "checksum" in ckpt else [f"{path} has no checksum (format {ckpt['format']}, from before "
                                                f"checkpoints were sealed): resumed as it is"]
        if ckpt["world_size"] == ctx.world_size:
            with _restoring("random state", path):
                _set_rng_state(ckpt["rng"][ctx.rank], self.generator)
        else:  # at an epoch's end with another number of processes: fresh augmentation streams
            self.generator.manual_seed(augment_stream_seed(self.seed, ctx.rank, self.epoch))
            notes.append(f"resuming with {ctx.world_size} process(es) a run checkpointed with {ckpt['world_size']}: "
                         f"the same recipe, other augmentation draws")
        return "; ".join(notes) or None

    def _check_schedule(self, steps: int, path: Path) -> None:
        """The optimiser's and the schedule's state as this run's would be after `steps` schedule steps (epochs or
        batches, as the schedule steps): what load_state_dict takes unchecked and a later step would trip over."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
                if buffer is not None and (not isinstance(buffer, torch.Tensor) or buffer.shape != p.shape):
                    raise CheckpointError(f"{path}: its optimiser's momenta do not fit the model; the file is damaged")
            rates = ("lr", "initial_lr", "weight_decay", "momentum")
            if not all(is_number(group.get(k)) and group[k] >= 0 for k in rates):
                raise CheckpointError(f"{path}: its optimiser's learning rate or decay is malformed; the file is "
                                      f"damaged")
        if self.scheduler.last_epoch != steps:
            unit = "step" if self.per_batch else "epoch"
            raise CheckpointError(f"{path}: its learning-rate schedule stands at {unit} {self.scheduler.last_epoch!r}, "
                                  f"its run at {steps}; the file is damaged")


@contextlib.contextmanager
def _restoring(part: str, path: Path) -> Iterator[None]:
    """A part of a checkpoint that its live object refuses is one line naming both."""
    try:
        yield
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        first_line = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot restore its {part} ({type(e).__name__}: {first_line}); the file is "
                              f"damaged or from another version: move it away to start over") from None


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
    step_maker: Callable[..., Callable] | None = None  # in place of step.make_step: a fused group's (pack.py)

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
        # The reference's own run keeps one count (a count changed mid-run sums in another order, and the run is no
        # longer the reference's bit for bit); compiled code guards on the count, and each change recompiled it
        # (measured: inductor's compile workers took the cores, the governor went from 2 threads to 1, the model
        # was compiled twice; past dynamo's recompile limit a run falls back to eager mode).
        fixed = ("the reference's arithmetic" if config.rng == "reference" and amp_dtype is None else
                 f"--compile {config.compile}: compiled code is specialised to it" if config.compile != "none" else
                 None)
        pinned = pinned_threads(config.threads, fixed is not None)
        if pinned is not None and device.type == "cpu":
            why = "--threads" if config.threads != "auto" else fixed
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


def continued_by_torchrun(config: TrainConfig, ctx: distributed.Context) -> bool:
    """Whether a worker of torchrun's (at any world size, one process included) continues the run from its
    checkpoint without --resume: its agent starts the same command again after a worker died (--max-restarts)
    and when a node joins or leaves an elastic job (a new round, not a restart to torchrun), and the command must
    then neither refuse the checkpoint nor, with --overwrite, move it aside again. --overwrite still moves aside
    a checkpoint of another job (another TORCHELASTIC_RUN_ID: torchrun's --rdzv-id). Rank 0 decides for all: the
    ranks of a round may come from agents with different restart counts (a node that joined has none)."""
    job, verdict = provenance.torchrun_job(), False
    if ctx.main and job is not None and not config.resume:
        checkpoint = RunPaths.of(config).checkpoint
        verdict = distributed.restart_count() > 0 or (
            os.path.lexists(checkpoint) and (not config.overwrite or _written_by_job(checkpoint, config, job)))
    return bool(distributed.gather_objects(ctx, verdict)[0])


def _written_by_job(checkpoint: Path, config: TrainConfig, job: str) -> bool:
    try:
        sessions = load_checkpoint(checkpoint, config)["provenance"]
    except SbattnError:  # unreadable: --overwrite moves it aside
        return False
    return any(isinstance(s, dict) and s.get("torchrun_job") == job for s in sessions)


def checkpoint_to_resume(run: Run) -> tuple[dict | None, Path]:
    """The checkpoint the run resumes from and its file, or (None, ...) to start from the beginning; refuses to
    start over one unasked. A checkpoint inside an epoch holds each rank's place in it: with another number of
    processes the run goes on from the last epoch's end (kept aside for this), or from its beginning when the
    first epoch had not ended."""
    config, ctx, paths = run.config, run.ctx, run.paths
    checkpoint = paths.checkpoint
    if not os.path.lexists(checkpoint):
        if config.resume:
            run.log(f"no checkpoint at {checkpoint}: starting from the beginning")
        return None, checkpoint
    if not config.resume:
        raise UserError(f"{checkpoint} holds an unfinished run: add --resume to continue it, or --overwrite to "
                        f"start over (moving it aside)", code=2)
    if distributed.restart_count():
        run.log(f"torchrun restarted the workers (restart {distributed.restart_count()}): continuing from the last "
                f"checkpoint")
    elif provenance.torchrun_job() is not None:
        run.log("torchrun started the workers: continuing from the last checkpoint")
    ckpt = load_checkpoint(checkpoint, config)
    if ckpt["world_size"] == ctx.world_size or ckpt["step"] == 0:
        return ckpt, checkpoint
    inside = (f"{checkpoint} was written inside epoch {ckpt['epoch'] + 1} by {ckpt['world_size']} process(es), "
              f"not {ctx.world_size}")
    if os.path.lexists(paths.epoch_checkpoint):
        kept = load_checkpoint(paths.epoch_checkpoint, config)
        if kept["step"] == 0 and kept["epoch"] == ckpt["epoch"]:
            run.log(f"{inside}: going on from the end of epoch {kept['epoch']} ({paths.epoch_checkpoint})")
            return kept, paths.epoch_checkpoint
    if ckpt["epoch"] == 0:
        run.log(f"{inside}: starting from the beginning (no epoch had ended)")
        return None, checkpoint
    raise UserError(f"{inside}, and the checkpoint of epoch {ckpt['epoch']}'s end is not beside it "
                    f"({paths.epoch_checkpoint}): resume it with {ckpt['world_size']} (torchrun --nproc_per_node)",
                    code=2)
