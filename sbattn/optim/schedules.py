"""Learning-rate schedules by name, each stepping per epoch or per batch (`Schedule.per_batch`)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR

__all__ = ["SCHEDULES", "Schedule", "ScheduleNumbers", "register_schedule", "build_schedule"]


@dataclass(frozen=True)
class ScheduleNumbers:
    """A recipe's schedule numbers; `total_steps`: the run's optimiser steps."""

    milestones: list[int]
    gamma: float
    total_steps: int
    warmup: float = 0.23
    lr_start: float = 0.2
    lr_end: float = 0.07


@dataclass(frozen=True)
class Schedule:
    """A registered schedule: how to build it on an optimiser, and when it steps."""

    build: Callable[[torch.optim.Optimizer, ScheduleNumbers], LRScheduler]
    per_batch: bool  # stepped after every optimiser step; else after every epoch


SCHEDULES: dict[str, Schedule] = {}


def register_schedule(per_batch: bool) -> Callable[[Callable], Callable]:
    """Register `fn(optimizer, numbers)` under its name, stepping per batch or per epoch; a builder that cannot be
    called so is refused now, in one line."""
    def register(fn: Callable[[torch.optim.Optimizer, ScheduleNumbers], LRScheduler]) -> Callable:
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise TypeError(f"schedule {fn.__name__!r} must take (optimizer, numbers), not ({', '.join(params)})")
        SCHEDULES[fn.__name__] = Schedule(fn, per_batch)
        return fn
    return register


def build_schedule(name: str, optimizer: torch.optim.Optimizer, numbers: ScheduleNumbers) -> tuple[LRScheduler, bool]:
    """The schedule `name` on `optimizer`, and whether it steps per batch."""
    schedule = SCHEDULES[name]
    return schedule.build(optimizer, numbers), schedule.per_batch


@register_schedule(per_batch=False)
def multistep(optimizer: torch.optim.Optimizer, numbers: ScheduleNumbers) -> LRScheduler:
    """The reference implementation's: the rate times gamma at each milestone epoch."""
    return MultiStepLR(optimizer, numbers.milestones, numbers.gamma)


@dataclass(frozen=True)
class WarmupWarmdown:
    """The rate's factor at a step: from lr_start up to 1 over the first `warmup` share of the steps, then down to
    lr_end at the last (airbench's). A callable object, not a closure, so that the checkpoint can hold it."""

    total_steps: int
    warmup: float
    start: float
    end: float

    def __call__(self, step: int) -> float:
        up = int(self.total_steps * self.warmup)
        if step < up:
            return self.start + (1 - self.start) * step / up
        return 1 + (self.end - 1) * (step - up) / (self.total_steps - up)


@register_schedule(per_batch=True)
def warmup_warmdown(optimizer: torch.optim.Optimizer, numbers: ScheduleNumbers) -> LRScheduler:
    """airbench's: a linear warm-up from lr_start to 1 over the first `warmup` of the steps, then linearly down to
    lr_end at the end, each step."""
    factor = WarmupWarmdown(numbers.total_steps, numbers.warmup, numbers.lr_start, numbers.lr_end)
    return LambdaLR(optimizer, factor)
