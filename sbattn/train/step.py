"""The training step, the same in every --compile mode, and what each mode compiles of it.

none: the step as written. model: the model compiled (forward and backward; on CUDA replayed as CUDA graphs).
step: the whole step compiled: the forward, the loss, the backward, the optimiser step and the epoch's sums, with
the learning rate a tensor on the device so that the schedule's steps change a value, not the compiled code. On
CUDA the pieces between the graph breaks that torch.compile keeps (before the backward, and around the optimiser
step) are replayed as CUDA graphs, so a step launches a few graphs instead of a few hundred kernels and never
waits on the host.

A run's optimisation built from its recipe: the optimiser and schedule it names (sbattn.optim's registries),
and lookahead when it asks; the reference's Nesterov SGD and MultiStepLR by default.

Which arithmetic a run uses: the autocast dtype for --precision on a device, and its name in the run's files.

The memory layout a run trains in, chosen by the machine: which layout oneDNN's kernels run fastest depends on the CPU (AVX-512 or AMX), the model and the precision.
On a CPU, `--layout auto` times a few training steps of the run's own model in each layout, interleaved, and
keeps the faster; the result is cached (tuning.json in the cache directory) under the CPU's model, the PyTorch
version, the model, the batch size, the precision and the threads, so the measurement is paid once. On CUDA
channels-last is the measured rule. The choice, and how it was made, goes into the run's history.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.functional as F

from ..config import Recipe, LAYOUTS, TrainConfig
from ..data import default_cache_dir
from ..data.limits import read_regular
from ..errors import UserError, DataError
from ..files import atomic_write
from ..models import create_model
from ..optim import Hyper, Lookahead, build_optimizer, build_schedule
from ..optim.schedules import ScheduleNumbers
from ..system import cpu_has_bf16, cpu_model

from .evaluation import sum_dtype, memory_format

__all__ = ["EpochSums", "Objective", "SUM_NAMES", "train_step", "make_step", "compile_mode", "compile_step",
           "set_lr_form", "make_momentum_buffers", "compile_failure", "Optimization", "make_optimization",
           "reference_optimizer", "WHITENING_BIAS", "resolve_precision", "precision_label", "use_true_fp32",
           "LayoutChoice", "choose_layout", "layout_name"]


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


WHITENING_BIAS = "whiten.bias"  # the parameter --whiten-bias-epochs freezes (airbench's network)


@dataclass
class Optimization:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_batch: bool  # the schedule steps after every optimiser step, else after every epoch
    lookahead: Lookahead | None


def make_optimization(model: nn.Module, recipe: Recipe, steps_per_epoch: int) -> Optimization:
    """The recipe's optimiser, schedule and lookahead on `model`, for a run of `steps_per_epoch` steps an epoch."""
    total = recipe.total_steps(steps_per_epoch)
    frozen = (None if recipe.whiten_bias_epochs is None
              else {WHITENING_BIAS: recipe.whiten_bias_epochs * steps_per_epoch})
    hyper = Hyper(recipe.init_lr, recipe.momentum, recipe.weight_decay, recipe.batch_size, recipe.bn_bias_lr, frozen)
    optimizer = build_optimizer(recipe.optimizer, model, hyper)
    numbers = ScheduleNumbers(recipe.milestones, recipe.gamma, total, recipe.warmup, recipe.lr_start, recipe.lr_end)
    scheduler, per_batch = build_schedule(recipe.schedule, optimizer, numbers)
    lookahead = (Lookahead(model, recipe.lookahead_every, recipe.lookahead_decay, total)
                 if recipe.lookahead_every else None)
    return Optimization(optimizer, scheduler, per_batch, lookahead)


def reference_optimizer(model: nn.Module, lr: float, weight_decay: float,
                        kernel: str = "foreach") -> torch.optim.SGD:
    """The reference implementation's optimiser alone (the benchmarks'): SGD with Nesterov momentum 0.9. kernel:
    "foreach" (the runs') or "fused" (measured no faster in a whole step, see docs/performance.md)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay,
                           **{kernel: True})


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def precision_label(amp_dtype: torch.dtype | None) -> str:
    """"fp32", "bfloat16" or "float16", as the run's files and benchmarks name the arithmetic."""
    return "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")


def use_true_fp32(device: torch.device) -> None:
    """fp32 convolutions in fp32: on CUDA, cuDNN would otherwise round their inputs to TF32's 10-bit mantissa on
    Ampere and later GPUs (PyTorch's default), which the reference's GPU (a 2070) never did."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


MAX_TUNING_BYTES = 1 << 20  # the cache of layout measurements: a few hundred bytes a model

WARMUP, TIMED, ROUNDS = 2, 3, 2  # steps per layout and round; rounds alternate the layouts


@dataclass(frozen=True)
class LayoutChoice:
    layout: str  # a key of LAYOUTS
    how: str  # "given", "rule", "fp32 rule", "measured" or "cached"
    step_seconds: dict | None = None  # per layout, when measured

    @property
    def memory_format(self) -> torch.memory_format:
        return LAYOUTS[self.layout]


def layout_name(fmt: torch.memory_format) -> str:
    return next(name for name, f in LAYOUTS.items() if f == fmt)


def choose_layout(config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
                  num_classes: int = 10) -> LayoutChoice:
    """The layout `config.layout` names; in fp32 on a CPU contiguous, whose gradients stay within fp32's rounding
    of float64's where channels-last's do not (docs/fp32.md); else the one measured fastest on this CPU, else the
    device's rule."""
    if config.layout != "auto":
        return LayoutChoice(config.layout, "given")
    if device.type == "cpu" and amp_dtype is None:
        return LayoutChoice("contiguous", "fp32 rule")
    if device.type != "cpu":
        return LayoutChoice(layout_name(memory_format(device)), "rule")
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()  # `~` expanded by validation
    key = json.dumps([cpu_model(), platform.machine(), torch.__version__, config.arch, config.attention,
                      config.width, config.placement, config.batch_size, str(amp_dtype), torch.get_num_threads()])
    known = _read(cache / "tuning.json")
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("layout") in LAYOUTS and isinstance(entry.get("step_seconds"), dict):
        return LayoutChoice(entry["layout"], "cached", entry["step_seconds"])  # anything else: measured again
    times = _measure(config, device, amp_dtype, num_classes)
    choice = LayoutChoice(min(times, key=times.__getitem__), "measured", times)
    _write(cache / "tuning.json", {**known, key: {"layout": choice.layout, "step_seconds": times}})
    return choice


def _measure(config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
             num_classes: int) -> dict[str, float]:
    """Median seconds per training step of the run's model in each layout, on random data; the run's random
    streams are left as they were."""
    with torch.random.fork_rng(devices=[]):
        model = create_model(config.arch, num_classes=num_classes, **config.model_options()).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
        x = torch.randn(config.batch_size, 3, 32, 32, device=device)
        y = torch.randint(0, num_classes, (config.batch_size,), device=device)
        sums = EpochSums.zeros(device, config.batch_size, config.batch_size)
        times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        for _ in range(ROUNDS):
            for name, fmt in LAYOUTS.items():
                # Module.to takes memory_format=; torch's overloads of it omit that.
                model = model.to(memory_format=fmt)  # type: ignore[call-overload]
                xf = x.contiguous(memory_format=fmt)
                for i in range(WARMUP + TIMED):
                    started = time.perf_counter()
                    optimizer.zero_grad(set_to_none=True)
                    train_step(model, optimizer, None, amp_dtype, sums, xf, y)
                    if i >= WARMUP:
                        times[name].append(time.perf_counter() - started)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _read(path: Path) -> dict:
    """The cache's measurements; an unreadable, oversized, poisoned file (or a FIFO there, never waited on) is
    no cache."""
    try:
        data = json.loads(read_regular(path, MAX_TUNING_BYTES, "tuning cache"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError, DataError):
        return {}


def _write(path: Path, data: dict) -> None:
    try:  # a cache: failing to write it costs a measurement next time, nothing more
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(json.dumps(data, indent=1).encode()))
    except (OSError, UserError):  # UserError: something not a regular file where it goes
        pass
