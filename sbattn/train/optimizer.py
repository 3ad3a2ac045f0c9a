"""The reference implementation's optimiser and learning-rate schedule, built from a run's recipe."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR

from ..config import Recipe

__all__ = ["reference_optimizer", "reference_schedule"]


def reference_optimizer(model: nn.Module, lr: float, weight_decay: float,
                        kernel: str = "foreach") -> torch.optim.SGD:
    """The reference implementation's optimiser: SGD with Nesterov momentum 0.9. kernel: "foreach" (ours) or
    "fused" (measured no faster in a whole step, see docs/performance.md)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay,
                           **{kernel: True})


def reference_schedule(model: nn.Module, recipe: Recipe) -> tuple[torch.optim.SGD, MultiStepLR]:
    """The recipe's optimiser on `model` and its schedule: the rate times gamma at each milestone."""
    optimizer = reference_optimizer(model, recipe.init_lr, recipe.weight_decay)
    return optimizer, MultiStepLR(optimizer, recipe.milestones, recipe.gamma)
