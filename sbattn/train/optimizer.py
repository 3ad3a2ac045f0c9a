"""A run's optimisation built from its recipe: the optimiser and schedule it names (sbattn.optim's registries),
and lookahead when it asks; the reference's Nesterov SGD and MultiStepLR by default."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Recipe
from ..optim import Hyper, Lookahead, build_optimizer, build_schedule
from ..optim.schedules import ScheduleNumbers

__all__ = ["Optimization", "make_optimization", "reference_optimizer", "WHITENING_BIAS"]

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
