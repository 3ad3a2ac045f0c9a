"""One epoch: its steps from where the run stands to the epoch's end (or a stop request), a step at a time
(Epoch), then its schedule step, evaluation and history entry (end_epoch); and where its batches and
evaluations come from, as --rng chooses (PIPELINES): sbattn's own random streams and batched augmentation on the
device, or the reference implementation's draws, augmentation and evaluation, bit for bit
(data/reference_draws.py, docs/reference-mode.md).

Loss and accuracy are summed on the device and read only when the progress bar refreshes and at the end of an
epoch, so the step loop does not wait on the host.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from ..data import CIFAR10, epoch_batches, steps_per_epoch, train_batches
from ..data.reference_draws import draw_epoch, draw_eval_pass, reference_batches
from ..errors import UserError
from ..nn import ShiftBalance
from ..optim import hold_finished_groups

from . import distributed
from .evaluation import Evaluation, evaluate, reference_evaluate
from .process import StopRequest
from .state import Run, RunState
from .step import precision_label, SUM_NAMES, EpochSums

__all__ = ["EpochTotals", "Epoch", "end_epoch", "epoch_line", "format_epoch", "lambda_stats", "Pipeline",
           "SbattnPipeline", "ReferencePipeline", "PIPELINES", "make_pipeline"]


@dataclass
class EpochTotals:
    """An epoch's sums, read from the device (global over ranks)."""

    loss: float
    correct: float
    seen: int
    seconds: float
    sampled_loss: float  # the reference's figures: the sum over its sampled batches (EpochSums)
    sampled_acc: float
    sampled: int  # how many batches they hold


class Epoch:
    """The epoch under way, a step at a time, from where the run stands: `step()` takes the next batch and hands it
    to `step_fn` (False when the epoch has no more, or a stop was agreed), `after_step()` does what follows a step
    once its arithmetic is done (a fused group computes it when its driver flushes the round): the schedule per
    batch, lookahead, progress, the stop check (every few steps across ranks, so that all stop at the same one) and
    a checkpoint every --checkpoint-steps; `close()` returns the totals, reduced over ranks. After a stop
    state.step is the number of steps done (never 0), else 0."""

    def __init__(self, run: Run, state: RunState, step_fn: Callable[[torch.Tensor, torch.Tensor], None],
                 sums: EpochSums, pipeline: Pipeline, stop: StopRequest, save: Callable[[], None] | None) -> None:
        self.run, self.state, self.step_fn, self.sums, self.stop, self.save = run, state, step_fn, sums, stop, save
        self.start = state.step
        sums.restart(state.partial, self.start)
        self.seen_before = sums.seen
        self.steps = run.config.steps_in_epoch(state.epoch, state.steps_per_epoch)  # a fractional run's last: fewer
        self.first_global = state.global_step
        self.index = self.start - 1  # the last step taken
        self.stopping = False
        self.lr = float(state.optimizer.param_groups[0]["lr"])
        state.model.train()
        self.bar = tqdm(total=self.steps, initial=self.start, desc=f"epoch {state.epoch + 1}/{run.config.epoch_count}",
                        leave=False, disable=not run.interactive, dynamic_ncols=True)
        self.started = self.refreshed = time.perf_counter()
        distributed.passing(run.ctx, state.epoch, self.start)
        distributed.entering("a training step's gradient all-reduce")
        self.batches = pipeline.batches(state)

    @property
    def done_before(self) -> int:
        """Optimiser steps of the run before the step under way (the last one taken)."""
        return self.first_global + self.index - self.start

    def step(self) -> bool:
        if self.stopping or self.index + 1 >= self.steps:
            return False
        x, y = next(self.batches)
        self.index += 1
        hold_finished_groups(self.state.optimizer, self.done_before)
        self.step_fn(x.contiguous(memory_format=self.state.memory_format), y)
        self.sums.seen += len(y)
        self.bar.update(1)
        return True

    def after_step(self) -> None:
        run, state, sums, step = self.run, self.state, self.sums, self.index
        if state.per_batch:
            state.scheduler.step()
        if state.lookahead is not None:
            state.lookahead.update(self.done_before + 1)
        now = time.perf_counter()
        run.threads.poll(now)
        last = step + 1 == self.steps
        if run.interactive and now - self.refreshed > 1.0 or last or self.stop:  # reading sums waits for the device
            self.refreshed = now
            _check_finite(run, sums.nonfinite, state.epoch)
            self.bar.set_postfix(loss=f"{sums.loss.item() / sums.seen:.4f}",
                                 acc=f"{100 * sums.correct.item() / sums.seen:.2f}%", lr=f"{self.lr:.4g}",
                                 ips=f"{(sums.seen - self.seen_before) / (now - self.started):.0f}")
        if not run.ctx.distributed:
            self.stopping = bool(self.stop)
        elif (step + 1) % 8 == 0 or last:
            distributed.passing(run.ctx, state.epoch, step + 1)
            self.stopping = distributed.any_rank(run.ctx, bool(self.stop), run.device)
            distributed.entering("a training step's gradient all-reduce")
        checkpoint_steps = run.config.checkpoint_steps
        if not self.stopping and self.save is not None and checkpoint_steps and (step + 1) % checkpoint_steps == 0 \
                and not last:
            _check_finite(run, sums.nonfinite, state.epoch)  # a diverged run must not replace the last good checkpoint
            totals, seen = _reduced(run, sums)
            state.step, state.partial = step + 1, _partial(totals, seen, sums.seconds + now - self.started)
            self.save()  # every rank, at the same step: the checkpoint gathers each rank's random state
            distributed.entering("a training step's gradient all-reduce")

    def close(self) -> EpochTotals:
        run, state, sums = self.run, self.state, self.sums
        self.bar.close()
        stopped = self.stopping and self.index + 1 < self.steps  # a stop in the last step ends the epoch whole
        seconds = sums.seconds + time.perf_counter() - self.started
        totals, seen = _reduced(run, sums)
        state.step = self.index + 1 if stopped else 0
        state.partial = _partial(totals, seen, seconds) if stopped else None
        return EpochTotals(totals["loss"].item(), totals["correct"].item(), int(seen.item()), seconds,
                           totals["sampled_loss"].item(), totals["sampled_acc"].item(),
                           sums.sampled_batches(self.steps))


def _reduced(run: Run, sums: EpochSums) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The epoch's sums so far and the samples seen, summed over ranks (new tensors: `sums` goes on adding)."""
    seen = torch.tensor(float(sums.seen), dtype=sums.loss.dtype, device=run.device)
    *reduced, seen = distributed.all_reduce_sum(run.ctx, *(getattr(sums, name) for name in SUM_NAMES), seen)
    return dict(zip(SUM_NAMES, reduced)), seen


def _partial(totals: dict[str, torch.Tensor], seen: torch.Tensor, seconds: float) -> dict:
    """An epoch's sums as a mid-epoch checkpoint holds them (RunState.partial)."""
    return {**{name: t.cpu() for name, t in totals.items()}, "seen": int(seen.item()), "seconds": seconds}


def end_epoch(run: Run, state: RunState, sums: EpochTotals, pipeline: Pipeline) -> None:
    """Evaluate when due, step the schedule, and add the epoch to the history: the exact figures (every sample
    counted once), then the reference implementation's (its sampled batches' training figures, the mean of its
    test batches')."""
    config, epoch = run.config, state.epoch
    lr = float(state.optimizer.param_groups[0]["lr"])
    entry: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": sums.loss / sums.seen,
                             "train_acc": sums.correct / sums.seen, "eval_loss": None, "eval_acc": None,
                             "seconds": sums.seconds, "images_per_sec": sums.seen / sums.seconds,
                             "eval_seconds": None, "eval_precision": None, "threads": torch.get_num_threads(),
                             "thread_ceiling": run.threads.ceiling, "layout": state.layout,
                             "train_loss_sampled": sums.sampled_loss / sums.sampled,
                             "train_acc_sampled": sums.sampled_acc / sums.sampled,
                             "eval_loss_batch_mean": None, "eval_acc_batch_mean": None}
    if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epoch_count:
        started = time.perf_counter()
        result = pipeline.evaluate(state.model)
        entry.update(eval_loss=result.loss, eval_acc=result.acc, eval_loss_batch_mean=result.batch_mean_loss,
                     eval_acc_batch_mean=result.batch_mean_acc)
        entry["eval_seconds"] = time.perf_counter() - started
        entry["eval_precision"] = precision_label(run.amp_dtype)  # the training's; the final accuracy is fp32's
    pipeline.epoch_ended()
    if not state.per_batch:
        state.scheduler.step()
    entry.update(lambda_stats(state.model))
    state.history.append(entry)
    state.epoch += 1


def epoch_line(history: list[dict], epochs: int) -> str:
    """The line that reports the last epoch of `history`, marked when its evaluation is the best so far."""
    entry = history[-1]
    best = max((h["eval_acc"] for h in history if h["eval_acc"] is not None), default=None)
    return format_epoch(entry, epochs, best is not None and entry["eval_acc"] == best)


def format_epoch(e: dict, epochs: int, best: bool) -> str:
    line = (f"epoch {e['epoch']:>3}/{epochs}  lr {e['lr']:.4g}  train loss {e['train_loss']:.4f} "
            f"acc {100 * e['train_acc']:.2f}%")
    if e["eval_acc"] is not None:
        line += f"  eval loss {e['eval_loss']:.4f} acc {100 * e['eval_acc']:.2f}%{' (best)' if best else ''}"
    return line + f"  {e['seconds']:.1f}s  {e['images_per_sec']:.0f} img/s"


def lambda_stats(model: nn.Module) -> dict[str, list[float]]:
    """Per SB block: mean and standard deviation of |lambda|."""
    lams = [m.lam.detach().abs().float() for m in model.modules() if isinstance(m, ShiftBalance)]
    if not lams:
        return {}
    return {"lambda_abs_mean": [l.mean().item() for l in lams], "lambda_abs_std": [l.std().item() for l in lams]}


def _check_finite(run: Run, nonfinite: torch.Tensor, epoch: int) -> None:
    """Stop on a non-finite loss. Under torchrun the failing rank exits and torchrun stops the others."""
    bad = nonfinite.item()
    if bad:
        checkpoint = run.paths.checkpoint
        kept = (f"the last good checkpoint is kept at {checkpoint}" if checkpoint.exists()
                else "no checkpoint had been written yet")
        raise UserError(f"non-finite loss at epoch {epoch + 1}, step {bad}"
                        f"{f' on rank {run.ctx.rank}' if run.ctx.distributed else ''}: stopped; {kept}")


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
        return evaluate(model, self.test_x, self.test_y, run.config.eval_batch_size,
                            batch_mean_size=run.config.batch_size, tta=tta, **spread)


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
