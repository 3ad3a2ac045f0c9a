"""Several runs trained by one process on one device, a step of each in turn.

Each run is exactly what a lone `sbattn train` of it is: its own model, optimiser, schedule, random streams, lock,
checkpoint and files, its words in its own log (<run>.log), resumed, stopped and refused as a lone run would be.
Only the driving is shared: one Ctrl-C or SIGTERM stops every run at its next step's end, each with its checkpoint.
On CUDA each run steps on a CUDA stream of its own, so that one run's kernels can fill the gaps another's leave
(the host queues run A's step while the GPU still works on run B's); on a CPU they simply take turns.

A run's own failure (a non-finite loss, a full disk: an SbattnError) ends that run with its one line, and the
others go on. Any other error stops every other run at its next step, checkpointed, and is raised.

--pack fused, horizontal fusion (HFTA, Wang et al., MLSys 2021; FusedGroup): runs of one model, differing in
their seeds and data alone, stepped as one. Their parameters and buffers are stacked along a new first dimension and one torch.func.vmap of the model's
forward and backward computes every run's step (convolutions batched over runs become one grouped convolution,
BatchNorm's batch statistics are each run's own). Each run then takes its own optimiser step on its own
parameters, with its own schedule, and adds to its own sums: everything else of a run (its checkpoint, files,
resume, stop) is what the driver above gives it. The results are a lone run's up to the order of floating-point sums
in the batched kernels (tests/test_fused.py: within 1e-5 relative).

The runs' steps are gathered (a member's step only hands over its batch) and computed together when the driver
flushes, after each round of steps; a group whose batches differ in shape, or a single member, steps as usual.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
import torch.nn.functional as F

from .. import console
from ..config import TrainConfig
from ..errors import SbattnError, UserError
from ..records import RunPaths

from . import distributed
from .loop import Trainer
from .process import StopRequest, alone_signal_handled
from .state import Run, RunResult
from .step import EpochSums, Objective, set_lr_form, train_step

__all__ = ["Outcome", "train_together", "FusedGroup", "fusion_key", "fusion_order"]


@dataclass
class Outcome:
    """How one run of a pack ended: its result, or the error that ended it."""

    config: TrainConfig
    result: RunResult | None = None
    error: SbattnError | None = None
    trainer: Trainer | None = field(default=None, repr=False)  # while it trains
    stream: torch.cuda.Stream | None = field(default=None, repr=False)  # its CUDA stream, on CUDA

    @property
    def exit_code(self) -> int:
        return self.result.exit_code if self.result is not None else self.error.code if self.error else 1


def train_together(configs: Sequence[TrainConfig], at_once: int | None = None,
                   ended: Callable[[int, Outcome], None] = lambda i, outcome: None,
                   began: Callable[[int], None] = lambda i: None, fuse: bool = False) -> list[Outcome]:
    """Train `configs` in this process on their one device, a step of each in turn, `at_once` of them at a time
    (all by default; the next starts as one ends); `began(i)` is called as the i-th starts, `ended(i, outcome)`
    as it ends. fuse: the runs of one model that differ in their seeds alone are stepped as one (FusedGroup, below).
    After a stop request or an error no new run starts (its outcome stays empty). Under torchrun, and with --rng
    reference (whose draws come from the one global generator), it is refused."""
    _check_pack(configs, fuse)
    groups = {key: FusedGroup() for key in dict.fromkeys(map(fusion_key, configs))} if fuse else {}
    group_of = [groups.get(fusion_key(config)) for config in configs]
    outcomes = [Outcome(config) for config in configs]
    pending = fusion_order(configs) if fuse else list(range(len(configs)))
    active: list[int] = []
    stop = StopRequest()
    failure: BaseException | None = None
    with stop.installed(), alone_signal_handled():
        while pending or active:
            while pending and len(active) < (at_once or len(configs)) and not stop and failure is None:
                i = pending.pop(0)
                began(i)
                try:
                    _start(outcomes[i], stop, group_of[i])
                    active.append(i)
                except SbattnError as e:
                    outcomes[i].error = e
                    ended(i, outcomes[i])
            if not active:
                break
            for i in list(active):
                done, error = _advance(outcomes[i])
                if error is not None:  # raised once the other runs have checkpointed
                    failure = failure or error
                    stop.signal = signal.SIGTERM
                if done:
                    active.remove(i)
                    ended(i, outcomes[i])
            for group in groups.values():  # the round's steps, handed over, computed together
                try:
                    group.flush()
                except Exception as e:  # noqa: BLE001  (raised once the other runs have checkpointed)
                    failure = failure or e
                    stop.signal = signal.SIGTERM
                    for i in [i for i in active if group_of[i] is group]:
                        _abandon(outcomes[i])  # its last step not taken: its last checkpoint is its state
                        active.remove(i)
                        ended(i, outcomes[i])
    if failure is not None:
        raise failure
    return outcomes


def _advance(outcome: Outcome) -> tuple[bool, Exception | None]:
    """A step of the run: (whether it has ended, an error not its own, which must stop the others)."""
    trainer = outcome.trainer
    assert trainer is not None  # an active run's is set until it ends
    try:
        with _on(outcome.stream):
            if trainer.advance():
                return False, None
        outcome.result, error = trainer.result, None
    except SbattnError as e:
        outcome.error, error = e, None
        _log_file(RunPaths.of(outcome.config))(f"sbattn train: {e.label}: {e}")
    except Exception as e:  # noqa: BLE001
        error = e
    trainer.close()
    outcome.trainer = None
    return True, error


def _abandon(outcome: Outcome) -> None:
    """End a run without a checkpoint (its lock released where it stands): the checkpoint on disk stays its last."""
    assert outcome.trainer is not None
    outcome.trainer.close()
    outcome.trainer = None


def _start(outcome: Outcome, stop: StopRequest, group: FusedGroup | None) -> None:
    """The run's trainer, ready to be driven (nothing runs before its first advance), and its stream on CUDA (none
    for a fused run: its steps run in the group's)."""
    run = Run.start(outcome.config, distributed.Context(), outcome.config.resolved_device, quiet=True,
                    log=_log_file(RunPaths.of(outcome.config)))
    if group is not None:
        run = dataclasses.replace(run, step_maker=group.make_step)
    outcome.trainer = Trainer(run, True, stop)
    outcome.stream = torch.cuda.Stream(run.device) if run.device.type == "cuda" and group is None else None


def _check_pack(configs: Sequence[TrainConfig], fuse: bool) -> None:
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("several runs in one process (--pack stream) is a single process: not under torchrun", code=2)
    devices = {str(torch.device(c.resolved_device)) for c in configs}
    if len(devices) > 1:
        raise UserError(f"several runs in one process train on one device, not {', '.join(sorted(devices))}", code=2)
    reference = [c.run_name for c in configs if c.rng == "reference"]
    if reference and len(configs) > 1:
        raise UserError(f"{reference[0]}: --rng reference draws from the process's one global generator, so its "
                        f"run cannot share a process with others; use --pack process", code=2)
    unfusable = [c.run_name for c in configs if c.compile != "none" or c.precision == "fp16"] if fuse else []
    if unfusable:
        raise UserError(f"{unfusable[0]}: fused runs step eagerly in fp32 or bf16 (--compile none, no fp16 loss "
                        f"scaling); use --pack stream", code=2)


@contextlib.contextmanager
def _on(stream: torch.cuda.Stream | None) -> Iterator[None]:
    if stream is None:
        yield
    else:
        with torch.cuda.stream(stream):
            yield


def _log_file(paths: RunPaths) -> Callable[..., None]:
    """A run's log lines, appended to <run>.log, as a lone run's process output is in a suite."""
    return lambda *parts, **_: console.append_to_log(paths.log, " ".join(str(p) for p in parts) + "\n")


def fusion_key(config: TrainConfig) -> tuple:
    """What runs must share to be stepped as one: the model, its precision and batches, the device; not the seed."""
    model = tuple(sorted(config.model_options().items()))  # what the model is built from, whatever is added later
    return (config.arch, model, config.dataset, config.batch_size, config.precision, config.device, config.layout,
            config.optimizer, config.label_smoothing, config.drop_last)


def fusion_order(configs: Sequence[TrainConfig]) -> list[int]:
    """The indices of `configs` with the runs that fuse next to each other, the groups in their first run's order:
    the runs at once are then whole groups (a suite plans seed by seed, one of each model, where none would fuse)."""
    first: dict[tuple, int] = {}
    keys = [first.setdefault(fusion_key(c), len(first)) for c in configs]
    return sorted(range(len(configs)), key=keys.__getitem__)


@dataclass
class _Member:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    sums: EpochSums
    objective: Objective


@dataclass
class FusedGroup:
    """Runs stepped as one. `make_step` stands in for train.step.make_step for each member as it starts."""

    pending: list[tuple[_Member, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    fused_steps: int = 0  # how many flushes ran as one batched step (the rest stepped one by one)

    def make_step(self, mode: str, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  amp_dtype: torch.dtype | None, sums: EpochSums, device: torch.device,
                  objective: Objective = Objective()) -> Callable[[torch.Tensor, torch.Tensor], None]:
        if mode != "none" or scaler.is_enabled():
            raise UserError("fused runs step eagerly in fp32 or bf16, without fp16's loss scaling: use --pack stream", code=2)
        set_lr_form(optimizer, None)
        member = _Member(model, optimizer, amp_dtype, sums, objective)  # held by the run's step alone: freed as it ends
        return lambda x, y: self.pending.append((member, x, y))

    def flush(self) -> None:
        """Compute the steps handed over since the last flush."""
        pending, self.pending = self.pending, []
        if len(pending) > 1 and len({(x.shape, x.dtype, y.shape) for _, x, y in pending}) == 1:
            self.fused_steps += 1
            _fused_step(pending)
            return
        for member, x, y in pending:
            member.optimizer.zero_grad(set_to_none=True)
            train_step(member.model, member.optimizer, None, member.amp_dtype, member.sums, x, y,
                       objective=member.objective)


def _fused_step(pending: list[tuple[_Member, torch.Tensor, torch.Tensor]]) -> None:
    members = [m for m, _, _ in pending]
    models = [m.model for m in members]
    params, buffers = stack_module_state(models)  # copies, the stacked parameters leaves of their own graph
    template = models[0]
    xs, ys = torch.stack([x for _, x, _ in pending]), torch.stack([y for _, _, y in pending])

    objective = members[0].objective  # one recipe's (fusion_key)

    def loss_of(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = functional_call(template, (p, b), (x,))
        return (*objective(out, y), out)

    amp = members[0].amp_dtype
    with torch.autocast(xs.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        backward_values, losses, outs = vmap(loss_of)(params, buffers, xs, ys)
    backward_values.sum().backward()  # each run's loss reaches its own parameters alone
    with torch.no_grad():
        for k, (member, model) in enumerate(zip(members, models)):
            for name, p in model.named_parameters():
                if p.requires_grad:  # a frozen one (airbench's whitening) takes no step, as in a lone run
                    p.grad = params[name].grad[k]
            for name, b in model.named_buffers():
                b.copy_(buffers[name][k])  # BatchNorm's running statistics, updated in the batched forward
    for k, (member, (_, _, y)) in enumerate(zip(members, pending)):
        member.optimizer.step()
        member.sums.add(losses[k].detach(), outs[k].detach(), y)
