"""Batches for training and evaluation: uint8 images moved to the device once, then per epoch shuffled, shared
out among the ranks, augmented and normalised."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .augmentation import _check_mode, augment

STREAM_STRIDE = 1_000_003   # the gap between the random streams of neighbouring seeds (epoch_order) and ranks
EPOCH_CHUNK = 8192          # images augmented at a time by epoch_batches


def normalize(images_u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> (x/255 - 0.5)/0.5, i.e. [-1, 1], in ``dtype`` (computed in float32 for half types)."""
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return images_u8.to(work).mul_(2 / 255).sub_(1).to(dtype)


def to_device_uint8(images_nhwc: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 (N, H, W, C) host array -> contiguous uint8 (N, C, H, W) tensor on ``device``."""
    if images_nhwc.dtype != np.uint8 or images_nhwc.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {images_nhwc.dtype} of shape {images_nhwc.shape}")
    # Copy as NHWC (one contiguous transfer) and transpose on the device.
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).to(device)
    return x.permute(0, 3, 1, 2).contiguous()


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: a CPU permutation that depends on (seed, epoch) only, the same on every rank."""
    g = torch.Generator().manual_seed((seed * STREAM_STRIDE + epoch) % 2**63)
    return torch.randperm(n, generator=g)


def alternating_flips(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """airbench's alternating flip: which of ``n`` images are mirrored in ``epoch``. Each is mirrored at random
    (from ``seed`` alone) in epoch 0, then the whole set is mirrored every other epoch, so that every image is seen
    both ways in any two epochs."""
    g = torch.Generator().manual_seed((seed * STREAM_STRIDE - 1) % 2**63)
    first = torch.rand(n, generator=g) < 0.5
    return (first ^ bool(epoch % 2)).to(device)


def augment_stream_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The seed of a rank's augmentation generator: one stream per rank (rank 0's is the single-process run's),
    moved on by ``epoch`` where a resume starts fresh streams."""
    return seed + STREAM_STRIDE * rank + epoch


def epoch_augment_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the generator that augments a rank's whole epoch at once (``epoch_batches``): one for each
    (seed, epoch, rank), so that any step of any epoch can be drawn again without a stream's saved state."""
    return ((seed * STREAM_STRIDE + epoch) * STREAM_STRIDE + rank + 1) % 2**63


def _check_split(batch_size: int, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if batch_size // world_size < 2:
        raise ValueError(f"batch_size {batch_size} gives under 2 samples per rank for {world_size} ranks; "
                         "BatchNorm needs 2")


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to device without a host sync: from pinned memory, asynchronously, where the device is a GPU."""
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _labels_on(labels: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    return _to_device(labels.to(torch.int64), device)


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Batches ``train_batches`` yields per rank: the full global batches, and the last unless ``drop_last`` or a
    share of it is < 2."""
    _check_split(batch_size, 0, world_size)
    full, rest = divmod(n, batch_size)
    return full + (1 if rest // world_size >= 2 and not drop_last else 0)


def train_batches(
    images_u8: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    generator: torch.Generator,
    mode: str = "reference",
    rank: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = torch.float32,
    start: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled, augmented, normalised epoch: yields (x, y) for this rank, from step ``start`` on.

    ``batch_size`` is the global batch; each rank takes its contiguous part of it (sizes differ by at most one).
    The last global batch is dropped when a rank would get a single sample, on every rank alike so that
    they stay in step. Give each rank its own ``generator`` seed (``augment_stream_seed``) so that their
    augmentations differ.
    """
    mode, y_all, order = _epoch_plan(images_u8, labels, batch_size, seed, epoch, mode, rank, world_size)
    steps = steps_per_epoch(images_u8.shape[0], batch_size, world_size, drop_last)
    flips = _flips(mode, images_u8, seed, epoch)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(start, steps):  # a resumed epoch skips its first steps without drawing for them
            idx = _step_indices(order, step, batch_size, rank, world_size)
            flip = None if flips is None else flips.index_select(0, idx)
            x = augment(images_u8.index_select(0, idx), generator, mode, flip=flip)
            yield normalize(x, dtype), y_all.index_select(0, idx)

    return batches()


def _epoch_plan(images_u8: torch.Tensor, labels: torch.Tensor | np.ndarray, batch_size: int, seed: int, epoch: int,
                mode: str, rank: int, world_size: int) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(the canonical augmentation mode, the labels on the images' device, the epoch's shuffled order), checked."""
    mode = _check_mode(mode)
    _check_split(batch_size, rank, world_size)
    y_all = _labels_on(labels, images_u8.device)
    n = images_u8.shape[0]
    if y_all.shape[0] != n:
        raise ValueError(f"{n} images but {y_all.shape[0]} labels")
    return mode, y_all, _to_device(epoch_order(n, seed, epoch), images_u8.device)


def _flips(mode: str, images_u8: torch.Tensor, seed: int, epoch: int) -> torch.Tensor | None:
    """The epoch's flip of every image where the mode alternates them (airbench), else None (drawn per batch)."""
    return alternating_flips(images_u8.shape[0], seed, epoch, images_u8.device) if mode == "airbench" else None


def _step_indices(order: torch.Tensor, step: int, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """The samples of ``rank``'s part of global batch ``step``."""
    return order[step * batch_size:(step + 1) * batch_size].tensor_split(world_size)[rank]


def epoch_batches(
    images_u8: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    mode: str = "reference",
    rank: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
    start: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``train_batches`` (the same samples in the same order), augmented before the first step in
    one pass over the rank's whole epoch, so that a step only takes a slice (``--compile step``).

    The draws come from a generator seeded by (seed, epoch, rank) alone (``epoch_augment_seed``), so an epoch
    resumed at step ``start`` is the same as the rest of the uninterrupted one; they differ from the per-batch
    draws of ``train_batches``. The epoch's images are laid out in ``memory_format``, so its slices are too.
    """
    mode, y_all, order = _epoch_plan(images_u8, labels, batch_size, seed, epoch, mode, rank, world_size)
    device = images_u8.device
    parts = [_step_indices(order, step, batch_size, rank, world_size) for step in range(steps_per_epoch(
        images_u8.shape[0], batch_size, world_size, drop_last))]
    idx = torch.cat(parts)
    generator = torch.Generator(device).manual_seed(epoch_augment_seed(seed, epoch, rank))
    flips = _flips(mode, images_u8, seed, epoch)
    x = augment(images_u8.index_select(0, idx), generator, mode, chunk=EPOCH_CHUNK,
                flip=None if flips is None else flips.index_select(0, idx))
    xs = normalize(x.contiguous(memory_format=memory_format), dtype).split([len(p) for p in parts])
    ys = y_all.index_select(0, idx).split([len(p) for p in parts])
    return zip(xs[start:], ys[start:])


def eval_shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The first and past-the-last sample of rank's contiguous part of `n` samples (sizes differ by at most one)."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return start, start + per + (1 if rank < extra else 0)


def eval_batches(
    images_u8: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-order, normalised batches; rank r gets the r-th contiguous shard, so every sample is seen once.

    ``batch_size`` is the global batch, as in ``train_batches``; a rank's batches hold ``batch_size // world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    y_all = _labels_on(labels, images_u8.device)
    n = images_u8.shape[0]
    if y_all.shape[0] != n:
        raise ValueError(f"{n} images but {y_all.shape[0]} labels")
    start, stop = eval_shard(n, rank, world_size)
    step = max(1, batch_size // world_size)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(start, stop, step):
            j = min(i + step, stop)
            yield normalize(images_u8[i:j], dtype), y_all[i:j]

    return batches()
