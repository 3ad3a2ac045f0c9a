"""The seed's CIFAR-10 training transforms, done on whole uint8 batches on the training device.

``augment`` composes RandomCrop(32, padding=4), RandomHorizontalFlip(0.5) and RandomRotation(15)
(nearest, zero fill) into one source-pixel index per output pixel and does a single gather, so
there is no per-image Python and no host sync. All randomness comes from one ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

AUGMENTS = ("seed", "standard", "none")
PAD = 4            # RandomCrop padding
MAX_ANGLE = 15.0   # RandomRotation degrees

__all__ = [
    "AUGMENTS", "AugmentParams", "sample_params", "apply_params", "augment", "normalize",
    "to_device_uint8", "epoch_order", "train_batches", "eval_batches", "steps_per_epoch",
]


@dataclass
class AugmentParams:
    """One batch's random draws, all tensors of length N on the images' device."""

    dy: torch.Tensor             # int64, crop offset of the source row, in [-PAD, PAD]
    dx: torch.Tensor             # int64, crop offset of the source column, in [-PAD, PAD]
    flip: torch.Tensor           # bool, horizontal flip
    angle: torch.Tensor | None   # degrees in [-MAX_ANGLE, MAX_ANGLE], counter-clockwise; None: no rotation


def _check_mode(mode: str) -> None:
    if mode not in AUGMENTS:
        raise ValueError(f"unknown augment mode {mode!r}; choose one of {', '.join(AUGMENTS)}")


def sample_params(n: int, generator: torch.Generator, mode: str = "seed") -> AugmentParams:
    """Draw crop offsets, flips and (mode "seed") angles for n images, on the generator's device."""
    _check_mode(mode)
    device = generator.device
    if mode == "none":
        zeros = torch.zeros(n, dtype=torch.int64, device=device)
        return AugmentParams(zeros, zeros, torch.zeros(n, dtype=torch.bool, device=device), None)
    crop = torch.randint(-PAD, PAD + 1, (2, n), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    angle = None
    if mode == "seed":
        # float64 so the nearest-pixel choice matches an exact (double precision) reference; MPS has no float64.
        ftype = torch.float32 if device.type == "mps" else torch.float64
        angle = (torch.rand(n, generator=generator, device=device, dtype=ftype) * 2 - 1) * MAX_ANGLE
    return AugmentParams(crop[0], crop[1], flip, angle)


def _source_index(p: AugmentParams, h: int, w: int) -> torch.Tensor:
    """(N, h*w) int64: each output pixel's source in the image zero-padded by one pixel, (h+2) x (w+2).

    Out-of-range coordinates are clamped onto the zero border, which stands for every "zero fill"
    case (crop padding and rotation fill) without masks.
    """
    n = p.flip.shape[0]
    hp, wp = h + 2, w + 2
    ys = torch.arange(h, device=p.flip.device)
    xs = torch.arange(w, device=p.flip.device)
    # Crop, then flip: the padded-image row and column behind each row and column of the cropped image.
    rows = (ys + (p.dy + 1).view(n, 1)).clamp_(0, hp - 1) * wp
    cols = (torch.where(p.flip.view(n, 1), (w - 1) - xs, xs) + (p.dx + 1).view(n, 1)).clamp_(0, wp - 1)
    if p.angle is None:
        return (rows.view(n, h, 1) + cols.view(n, 1, w)).view(n, h * w)
    # Rotation reads the cropped image, which is zero outside; entry 0 and the last entry of each table are that zero.
    zero = rows.new_zeros(n, 1)
    rows = torch.cat([zero, rows, zero], 1)
    cols = torch.cat([zero, cols, zero], 1)
    # PIL's Image.rotate(angle, NEAREST): the output pixel centre (x+0.5, y+0.5) goes about the image centre
    # (w/2, h/2) through the inverse rotation; the source is the pixel containing it, i.e. the floor.
    rad = torch.deg2rad(p.angle).view(n, 1, 1)
    cos, sin = rad.cos(), rad.sin()
    u = xs.to(rad.dtype).view(1, 1, w) - (w - 1) / 2
    v = ys.to(rad.dtype).view(1, h, 1) - (h - 1) / 2
    # +1 shifts into the tables above; truncation equals floor for every value that is not clamped to 0 anyway.
    sx = (cos * u + (w / 2 + 1) - sin * v).long().clamp_(0, w + 1).view(n, h * w)
    sy = (sin * u + (cos * v + (h / 2 + 1))).long().clamp_(0, h + 1).view(n, h * w)
    return rows.gather(1, sy).add_(cols.gather(1, sx))


def apply_params(images_u8: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply crop, then flip, then rotation as drawn in ``params`` to a uint8 NCHW batch, with one gather."""
    n, c, h, w = images_u8.shape
    if n == 0:
        return images_u8
    idx = _source_index(params, h, w)
    padded = torch.nn.functional.pad(images_u8, (1, 1, 1, 1)).view(n, c, (h + 2) * (w + 2))
    return padded.gather(2, idx.unsqueeze(1).expand(n, c, h * w)).view(n, c, h, w)


def augment(images_u8: torch.Tensor, generator: torch.Generator, mode: str = "seed") -> torch.Tensor:
    """Augment a uint8 NCHW batch: "seed" crop+flip+rotate, "standard" crop+flip, "none" returns the input."""
    _check_mode(mode)
    if images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
        raise ValueError(f"augment expects a uint8 NCHW batch, got {images_u8.dtype} of shape {tuple(images_u8.shape)}")
    if mode == "none":
        return images_u8
    gdev, idev = generator.device, images_u8.device
    # torch.Generator(device="cuda") reports no index, while tensors always carry one.
    if gdev.type != idev.type or (gdev.index is not None and idev.index is not None and gdev.index != idev.index):
        raise ValueError(
            f"the generator is on {generator.device} but the images are on {images_u8.device}; "
            "create it with torch.Generator(device=images.device)"
        )
    return apply_params(images_u8, sample_params(images_u8.shape[0], generator, mode))


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
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=g)


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


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Batches ``train_batches`` yields per rank: the full global batches, and the last unless a share is < 2."""
    _check_split(batch_size, 0, world_size)
    full, rest = divmod(n, batch_size)
    return full + (1 if rest // world_size >= 2 else 0)


def train_batches(
    images_u8: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    generator: torch.Generator,
    mode: str = "seed",
    rank: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = torch.float32,
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled, augmented, normalised epoch: yields (x, y) for this rank, from step ``start`` on.

    ``batch_size`` is the global batch; each rank takes its contiguous part of it (sizes differ by at most one).
    The last global batch is dropped when a rank would get a single sample, on every rank alike so that
    they stay in step. Give each rank its own ``generator`` seed so that their augmentations differ.
    """
    _check_mode(mode)
    _check_split(batch_size, rank, world_size)
    device = images_u8.device
    y_all = _labels_on(labels, device)
    n = images_u8.shape[0]
    if y_all.shape[0] != n:
        raise ValueError(f"{n} images but {y_all.shape[0]} labels")
    order = _to_device(epoch_order(n, seed, epoch), device)
    steps = steps_per_epoch(n, batch_size, world_size)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(start, steps):  # a resumed epoch skips its first steps without drawing for them
            idx = order[step * batch_size:(step + 1) * batch_size].tensor_split(world_size)[rank]
            x = augment(images_u8.index_select(0, idx), generator, mode)
            yield normalize(x, dtype), y_all.index_select(0, idx)

    return batches()


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
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    stop = start + per + (1 if rank < extra else 0)
    step = max(1, batch_size // world_size)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(start, stop, step):
            j = min(i + step, stop)
            yield normalize(images_u8[i:j], dtype), y_all[i:j]

    return batches()
