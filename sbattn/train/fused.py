"""Horizontal fusion (HFTA, Wang et al., MLSys 2021): runs of one model, differing in their seeds and data alone,
stepped as one.

Their parameters and buffers are stacked along a new first dimension and one torch.func.vmap of the model's
forward and backward computes every run's step (convolutions batched over runs become one grouped convolution,
BatchNorm's batch statistics are each run's own). Each run then takes its own optimiser step on its own
parameters, with its own schedule, and adds to its own sums: everything else of a run (its checkpoint, files,
resume, stop) is what train/pack.py gives it. The results are a lone run's up to the order of floating-point sums
in the batched kernels (tests/test_fused.py: within 1e-5 relative).

The runs' steps are gathered (a member's step only hands over its batch) and computed together when the driver
flushes, after each round of steps; a group whose batches differ in shape, or a single member, steps as usual.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..config import TrainConfig
from ..errors import UserError
from .step import EpochSums, Objective, set_lr_form, train_step

__all__ = ["FusedGroup", "fusion_key", "fusion_order"]


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
