"""How a run's weights move: the optimisers, the learning-rate schedules and lookahead, each by registered name.

A recipe names its optimiser (`optimizer`) and schedule (`schedule`); the training loop builds them from the
recipe's numbers, steps a schedule per batch or per epoch as it says, and checkpoints and restores whichever it is.
"""
from .lookahead import Lookahead
from .optimizers import OPTIMIZERS, Hyper, build_optimizer, hold_finished_groups, register_optimizer
from .schedules import SCHEDULES, Schedule, build_schedule, register_schedule

__all__ = ["OPTIMIZERS", "SCHEDULES", "Hyper", "Schedule", "Lookahead", "build_optimizer", "build_schedule",
           "register_optimizer", "register_schedule", "hold_finished_groups"]
