"""Where a run's batches and evaluations come from, as --rng chooses (PIPELINES): sbattn's own random streams and
batched augmentation on the device, or the reference implementation's draws, augmentation and evaluation, bit
for bit (data/reference_draws.py, docs/reference-mode.md)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import CIFAR10, epoch_batches, steps_per_epoch, train_batches
from ..data.reference_draws import draw_epoch, draw_eval_pass, reference_batches
from .evaluation import Evaluation, evaluate_run, reference_evaluate
from .run import Run
from .state import RunState

__all__ = ["Pipeline", "SbattnPipeline", "ReferencePipeline", "PIPELINES", "make_pipeline"]

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Pipeline:
    """A run's data on the device (uint8 images, int64 labels) and the host's copy of it."""

    run: Run
    data: CIFAR10
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def batches(self, state: RunState) -> Batches:
        """The batches of the epoch under way, from its next step."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, final: bool = False, tta: int = 0) -> Evaluation:
        """The test set's figures during training (in the run's precision, over the ranks), or with `final` the
        final weights' in fp32 in this process alone, under test-time augmentation `tta`."""
        raise NotImplementedError

    def epoch_ended(self) -> None:
        """What follows an epoch's training in the order of the run's draws."""


class SbattnPipeline(Pipeline):
    """Every draw from a stream of the run's own (per seed, epoch and rank); the epoch augmented on the device a
    batch at a time, or with --compile step a whole epoch at once; evaluation on a folded copy of the model."""

    def batches(self, state: RunState) -> Batches:
        config, ctx = self.run.config, self.run.ctx
        common: dict[str, Any] = dict(seed=state.seed, epoch=state.epoch, mode=config.augment, start=state.step,
                                      rank=ctx.rank, world_size=ctx.world_size, drop_last=config.drop_last)
        if config.compile == "step":
            return epoch_batches(self.train_x, self.train_y, config.batch_size, memory_format=state.memory_format,
                                 **common)
        return train_batches(self.train_x, self.train_y, config.batch_size, generator=state.generator, **common)

    def evaluate(self, model: nn.Module, final: bool = False, tta: int = 0) -> Evaluation:
        run = self.run
        spread: dict[str, Any] = {} if final else dict(amp_dtype=run.amp_dtype, rank=run.ctx.rank,
                                                       world_size=run.ctx.world_size)
        return evaluate_run(model, self.test_x, self.test_y, run.config.eval_batch_size,
                            reference_batch=run.config.batch_size, tta=tta, **spread)


class ReferencePipeline(Pipeline):
    """The reference implementation's run after torch.manual_seed(seed): each epoch's order, crops, flips and
    angles drawn from the global generator as its DataLoader and transforms draw them, each image augmented by
    Pillow, and every epoch followed by its test loader's draw; evaluated on the model itself at the training
    batch size. One process."""

    def batches(self, state: RunState) -> Batches:
        # The whole epoch is drawn at its start (nothing else draws from the generator until it ends), so a
        # checkpoint inside it keeps the state before the draws and a resumed run draws the epoch again.
        state.epoch_rng = torch.get_rng_state()
        config = self.run.config
        draws = draw_epoch(len(self.data.train_labels), config.augment)
        steps = steps_per_epoch(len(self.data.train_labels), config.batch_size)
        return reference_batches(self.data.train_images, self.data.train_labels, config.batch_size, draws,
                                 state.step, steps, self.run.device)

    def evaluate(self, model: nn.Module, final: bool = False, tta: int = 0) -> Evaluation:
        return reference_evaluate(model, self.test_x, self.test_y, self.run.config.batch_size,
                                  None if final else self.run.amp_dtype)

    def epoch_ended(self) -> None:
        draw_eval_pass()  # the reference evaluates after every epoch, so its test loader draws every epoch


PIPELINES: dict[str, type[Pipeline]] = {"sbattn": SbattnPipeline, "reference": ReferencePipeline}


def make_pipeline(run: Run, data: CIFAR10, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                  test_y: torch.Tensor) -> Pipeline:
    return PIPELINES[run.config.rng](run, data, train_x, train_y, test_x, test_y)
