"""The training step, the same in every --compile mode, and what each mode compiles of it.

none: the step as written. model: the model compiled (forward and backward; on CUDA replayed as CUDA graphs).
step: the whole step compiled: the forward, the loss, the backward, the optimiser step and the epoch's sums, with
the learning rate a tensor on the device so that the schedule's steps change a value, not the compiled code. On
CUDA the pieces between the graph breaks that torch.compile keeps (before the backward, and around the optimiser
step) are replayed as CUDA graphs, so a step launches a few graphs instead of a few hundred kernels and never
waits on the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .evaluation import sum_dtype

__all__ = ["EpochSums", "Objective", "SUM_NAMES", "train_step", "make_step", "compile_mode", "compile_step", "set_lr_form",
           "make_momentum_buffers", "compile_failure"]


# The sums that carry an interrupted epoch's figures into its resumption (RunState.partial), each a 0-dim tensor.
SUM_NAMES = ("loss", "correct", "sampled_loss", "sampled_acc")


@dataclass
class EpochSums:
    """The running sums of an epoch, on the device: one set per run, reset in place each epoch, so that a compiled
    step always updates the same tensors.

    Besides the exact sums over every sample, the reference implementation's figures: the loss and accuracy of
    the batches whose index is a multiple of `sample_every` (the reference prints, and averages, every
    batch_size-th batch), each batch weighing one: sampled_batches() of them in an epoch."""

    loss: torch.Tensor
    correct: torch.Tensor
    sampled_loss: torch.Tensor  # the sampled batches' mean losses, summed (this rank's share of each)
    sampled_acc: torch.Tensor  # their accuracies, summed (this rank's share)
    nonfinite: torch.Tensor  # the first step with a non-finite loss, counted from 1; 0: none yet
    steps: torch.Tensor  # steps done in the epoch
    sample_every: int  # the run's batch size
    samples: int  # the training set's size: the last global batch may be smaller
    seen: int = 0
    seconds: float = 0.0  # training time of the epoch before this stretch of it (nonzero after a mid-epoch resume)

    @classmethod
    def zeros(cls, device: torch.device, batch_size: int, samples: int) -> "EpochSums":
        def zero(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros((), dtype=dtype, device=device)
        dtype = sum_dtype(device)  # the sums (SUM_NAMES), then the two counters
        return cls(loss=zero(dtype), correct=zero(dtype), sampled_loss=zero(dtype), sampled_acc=zero(dtype),
                   nonfinite=zero(torch.int64), steps=zero(torch.int64), sample_every=batch_size, samples=samples)

    def sampled_batches(self, steps: int) -> int:
        """How many of an epoch's `steps` batches the sampled figures hold."""
        return -(-steps // self.sample_every)

    def restart(self, partial: dict[str, Any] | None, step: int) -> None:
        """Start the epoch at `step`, from the sums an interrupted epoch had reached (`partial`), or from zero."""
        with torch.no_grad():
            for name in SUM_NAMES:
                if partial is not None and name in partial:  # checkpoints of 0.2 had no sampled figures
                    getattr(self, name).copy_(partial[name])
                else:
                    getattr(self, name).zero_()
            self.nonfinite.zero_()
            self.steps.fill_(step)
        self.seen = 0 if partial is None else partial["seen"]
        self.seconds = 0.0 if partial is None else partial["seconds"]

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.steps += 1
        self.nonfinite += (~torch.isfinite(loss)).long() * (self.nonfinite == 0) * self.steps
        self.loss += loss.to(self.loss.dtype) * len(y)
        hits = (out.argmax(1) == y).sum()
        self.correct += hits
        index = self.steps - 1
        batch = (self.samples - index * self.sample_every).clamp(max=self.sample_every)  # the global batch's size
        taken = index % self.sample_every == 0
        # One process: the batch's loss as is, its accuracy as the reference divides it (in float32).
        share = len(y) / batch.to(self.loss.dtype)
        self.sampled_loss += torch.where(taken, loss.to(self.loss.dtype) * share, 0)
        self.sampled_acc += torch.where(taken, (hits.float() / batch.float()).to(self.loss.dtype), 0)


@dataclass(frozen=True)
class Objective:
    """The training loss: cross-entropy with `label_smoothing`, averaged over the batch (the reference's), or with
    `summed_over` = the number of processes, summed over the global batch (airbench's; DDP averages the ranks'
    gradients, so each rank's sum is scaled by their number)."""

    label_smoothing: float = 0.0
    summed_over: int = 0  # 0: the mean

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what backward takes, the batch's mean loss for the sums)."""
        loss = F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
        return (loss * (len(y) * self.summed_over) if self.summed_over else loss), loss


def train_step(model: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None, amp_dtype: torch.dtype | None, sums: EpochSums, x: torch.Tensor,
               y: torch.Tensor, cast_cache: bool = True, objective: Objective = Objective()) -> None:
    """One step after the gradients were cleared: forward, loss, backward, optimiser step, sums. scaler: fp16's
    loss scaling, else None (torch.compile does not trace the scaler, and the optimiser step must be traced).
    cast_cache: autocast's cache of weight casts; a step captured as a CUDA graph by hand must not use it."""
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None,
                        cache_enabled=cast_cache):
        out = model(x)
        objective_value, loss = objective(out, y)
    if scaler is None:
        objective_value.backward()
        optimizer.step()
    else:
        scaler.scale(objective_value).backward()
        scaler.step(optimizer)
        scaler.update()
    sums.add(loss.detach(), out.detach(), y)


def compile_mode(device: torch.device) -> str:
    """torch.compile's mode for training on `device`: on CUDA, "reduce-overhead" replays the compiled pieces as
    CUDA graphs (at batch 64 the GPU would otherwise wait on Python to launch hundreds of small kernels a step)."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def compile_step(fn: Callable, device: torch.device) -> Callable:
    """The whole step compiled; dynamic=False: one version for the full batches, one for an epoch's last."""
    return torch.compile(fn, mode=compile_mode(device), dynamic=False)


def set_lr_form(optimizer: torch.optim.Optimizer, device: torch.device | None) -> None:
    """Learning rates as float64 tensors on `device` (a compiled optimiser step reads the value at run time, and
    the scheduler writes into the tensor), or, with None, as Python floats (the eager optimiser's own form)."""
    for group in optimizer.param_groups:
        value = float(group["lr"])
        group["lr"] = value if device is None else torch.tensor(value, dtype=torch.float64, device=device)


def make_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """SGD's momentum buffers, made now as zeros where the optimiser has none yet. SGD makes each lazily, as a copy
    of the first gradient, inside its first step; in a step replayed as a CUDA graph that copy would live in the
    graph's memory pool, where the next replay overwrites it. From zero the first step gives the same buffer
    (0 * momentum + gradient), so the run is unchanged."""
    for group in optimizer.param_groups:
        if not group.get("momentum"):
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def make_step(mode: str, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              amp_dtype: torch.dtype | None, sums: EpochSums, device: torch.device,
              objective: Objective = Objective()) -> Callable[..., None]:
    """`step(x, y)`, one training step as --compile `mode` takes it, for `model` (the module that trains: DDP's
    wrapper under torchrun); it adds to `sums`. Sets the optimiser's learning rates to the form the mode needs."""
    set_lr_form(optimizer, device if mode == "step" else None)
    scaling = scaler if scaler.is_enabled() else None
    if mode == "step":
        make_momentum_buffers(optimizer)
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        lrs = [g["lr"] for g in optimizer.param_groups]
        for t in (*(getattr(sums, name) for name in SUM_NAMES), sums.nonfinite, sums.steps, *state, *lrs):
            torch._dynamo.mark_static_address(t)  # the same tensors every step and epoch: CUDA graphs update them
        body = partial(compile_step(train_step, device), model, optimizer, scaling, amp_dtype, sums,
                       objective=objective)
    else:
        forward = torch.compile(model, mode=compile_mode(device)) if mode == "model" else model
        body = partial(train_step, forward, optimizer, scaling, amp_dtype, sums, objective=objective)

    graphs = mode == "step" and compile_mode(device) == "reduce-overhead"

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if graphs:  # a new step: the CUDA graphs' outputs of the last one (its activations, gradients) are done with
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)  # outside: torch.compile does not trace it
        try:
            body(x, y)
        except Exception as e:
            if mode == "none" or not type(e).__module__.startswith(("torch._inductor", "torch._dynamo")):
                raise
            raise UserError(compile_failure(mode, e)) from None
    return step


def compile_failure(mode: str, error: BaseException) -> str:
    """One line for a torch.compile that failed (a compiler missing, say), instead of its hundred-line report."""
    first = (str(error).strip().splitlines() or [""])[0]
    return (f"--compile {mode}: torch.compile could not build the step ({type(error).__name__}: {first}); on a CPU "
            f"it needs a working C++ compiler (the CXX variable, or c++, g++ or clang++ on the PATH): install one, "
            f"or train with --compile none")
