"""--tensorboard: every epoch's scalars as TensorBoard events, under <output_dir>/tensorboard/<run>.

Tags: loss/train, loss/eval, accuracy/train, accuracy/eval (fractions, as the run's JSON), learning_rate,
throughput/images_per_sec, time/epoch_seconds, and lambda/block_<i>: SB's mean |lambda| of each block. The step is
the epoch. Events are flushed after each epoch, so a running TensorBoard shows the run as it trains.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from ..files import check_folder

__all__ = ["epoch_logger"]

SCALARS = {"train_loss": "loss/train", "eval_loss": "loss/eval", "train_acc": "accuracy/train",
           "eval_acc": "accuracy/eval", "lr": "learning_rate", "images_per_sec": "throughput/images_per_sec",
           "seconds": "time/epoch_seconds"}


@contextlib.contextmanager
def epoch_logger(log_dir: Path | None, epochs_done: int) -> Iterator[Callable[[dict], None]]:
    """log(entry) for each history entry; a no-op without a log_dir. A resumed run first drops the events of
    epochs after its checkpoint (purge_step), which a stopped run may have logged but will train again."""
    if log_dir is None:
        yield lambda entry: None
        return
    for folder in (log_dir.parent, log_dir):  # <output_dir>/tensorboard, then the run's own
        check_folder(folder, "--tensorboard writes its events there, never through a link (or train without "
                             "--tensorboard)")
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(log_dir=str(log_dir), purge_step=epochs_done + 1 if epochs_done else None)

    def log(entry: dict) -> None:
        step = entry["epoch"]
        for key, tag in SCALARS.items():
            if entry.get(key) is not None:
                writer.add_scalar(tag, entry[key], step)
        for block, value in enumerate(entry.get("lambda_abs_mean") or (), 1):
            writer.add_scalar(f"lambda/block_{block}", value, step)
        writer.flush()
    try:
        yield log
    finally:
        writer.close()

