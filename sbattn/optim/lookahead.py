"""Lookahead as airbench does it: every `every` steps the weights move to an exponential average of themselves
and the average is kept; at the last step the weights become the average."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Lookahead"]

POWER = 3  # the decay grows as (step / total)**3: little averaging early, much at the end


class Lookahead:
    """The average of `model`'s floating-point state (weights and BatchNorm's running statistics), updated in place
    with `update(step)` after each optimiser step (`step` counted from 1)."""

    def __init__(self, model: nn.Module, every: int, decay: float, total_steps: int) -> None:
        self.every, self.decay, self.total_steps = every, decay, total_steps
        self.tensors = [t for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()]
        self.average = [t.detach().clone() for t in self.tensors]

    def factor(self, step: int) -> float:
        """The share of the old average that an update at `step` keeps."""
        return self.decay ** self.every * (step / self.total_steps) ** POWER

    def update(self, step: int) -> None:
        if step % self.every == 0:
            self._move(self.factor(step))
        if step == self.total_steps:
            self._move(1.0)

    @torch.no_grad()
    def _move(self, keep: float) -> None:
        weights = [t.detach() for t in self.tensors]
        torch._foreach_lerp_(self.average, weights, 1 - keep)
        torch._foreach_copy_(weights, self.average)

    def state_dict(self) -> list[torch.Tensor]:
        return self.average

    def load_state_dict(self, average: list[torch.Tensor]) -> None:
        if len(average) != len(self.average) or any(a.shape != b.shape for a, b in zip(average, self.average)):
            raise ValueError("the lookahead average does not fit the model")
        with torch.no_grad():
            torch._foreach_copy_(self.average, list(average))
