"""The reference implementation's random draws and image arithmetic, bit for bit: what its
``DataLoader(shuffle=True, num_workers=0)`` and its torchvision transforms (``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, ``RandomRotation(15)``, ``ToTensor()``, ``Normalize(0.5, 0.5)``) draw from the global
torch generator, in their order, and what Pillow makes of each image.

The draws, per pass over a loader, as torch's DataLoader makes them (torch 2.x): the iterator's base seed (one
int64, drawn even without workers), then the shuffling sampler's seed (one int64; it seeds a private generator for
``randperm``), then for each image in the shuffled order, one at a time: the crop's row and column
(``torch.randint``), the flip (``torch.rand``), the angle (``uniform_`` over [-15, 15]). torchvision 0.8 and later
draw these from torch's generator; torchvision 0.6, which the reference pinned, drew them from Python's ``random``,
which ``torch.manual_seed`` does not seed (docs/reference-mode.md). A test loader (no shuffling) draws its base
seed alone.

Slow by design (a few Python calls and a Pillow rotation per image, about 20 us each): the batched path in
augmentation.py is the fast default; this one is for runs that must be the reference's.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .augmentation import MAX_ANGLE, PAD

__all__ = ["ReferenceEpoch", "draw_epoch", "draw_eval_pass", "pillow_augment", "reference_normalize",
           "reference_batches"]


@dataclass
class ReferenceEpoch:
    """One training pass's draws: the order of the images, and each position's crop, flip and angle."""

    order: torch.Tensor  # int64, the images in the order the loader yields them
    top: list[int]  # the crop's first row in the padded image, in [0, 2 * PAD]
    left: list[int]  # its first column
    flip: list[bool]
    angle: list[float]  # degrees, counter-clockwise (Pillow's sense); 0: not rotated


def _int64() -> int:
    return int(torch.empty((), dtype=torch.int64).random_().item())


def draw_eval_pass() -> None:
    """What one pass over an unshuffled loader draws: its iterator's base seed."""
    _int64()


def draw_epoch(n: int, mode: str = "reference") -> ReferenceEpoch:
    """One pass over a shuffled loader of `n` images, drawn from the global torch generator in the reference's
    order, with the transforms of augmentation `mode`: "reference" crop, flip and rotation, "standard" crop and
    flip, "none" none (augmentation.AUGMENTS)."""
    _int64()  # the iterator's base seed, for workers it does not have
    sampler = torch.Generator().manual_seed(_int64())
    order = torch.randperm(n, generator=sampler)
    top, left, flip, angle = [PAD] * n, [PAD] * n, [False] * n, [0.0] * n
    if mode != "none":
        span = 2 * PAD + 1
        for k in range(n):  # one image at a time: crop (row, column), flip, rotation, as the transforms draw them
            top[k] = int(torch.randint(0, span, size=(1,)).item())
            left[k] = int(torch.randint(0, span, size=(1,)).item())
            flip[k] = bool(torch.rand(1) < 0.5)
            if mode == "reference":
                angle[k] = float(torch.empty(1).uniform_(-MAX_ANGLE, MAX_ANGLE).item())
    return ReferenceEpoch(order, top, left, flip, angle)


def pillow_augment(images_nhwc: np.ndarray, epoch: ReferenceEpoch, start: int, stop: int) -> np.ndarray:
    """Positions start..stop-1 of the epoch (uint8 NHWC in, uint8 NHWC out), each image padded, cropped, flipped
    and rotated by Pillow as torchvision does it to a PIL image: zero padding, nearest-neighbour rotation about
    the centre with zero fill."""
    size = images_nhwc.shape[1]
    out = np.empty((stop - start, *images_nhwc.shape[1:]), dtype=np.uint8)
    for k, position in enumerate(range(start, stop)):
        image = np.zeros((size + 2 * PAD, size + 2 * PAD, images_nhwc.shape[3]), dtype=np.uint8)
        image[PAD:PAD + size, PAD:PAD + size] = images_nhwc[int(epoch.order[position])]
        top, left = epoch.top[position], epoch.left[position]
        pil = Image.fromarray(image[top:top + size, left:left + size])
        if epoch.flip[position]:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if epoch.angle[position]:
            pil = pil.rotate(epoch.angle[position], resample=Image.Resampling.NEAREST, expand=False,
                             fillcolor=(0,) * images_nhwc.shape[3])
        out[k] = np.asarray(pil)
    return out


def reference_normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 as ToTensor then Normalize(0.5, 0.5) compute it: x / 255, then (x - 0.5) / 0.5 (which
    rounds differently from normalize()'s x * (2/255) - 1 in some last bits)."""
    return images_u8.to(torch.float32).div_(255).sub_(0.5).div_(0.5)


def reference_batches(images_nhwc: np.ndarray, labels: np.ndarray, batch_size: int, epoch: ReferenceEpoch,
                      start: int, steps: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches `start` to `steps - 1` of the drawn `epoch`: (normalised images, labels) on `device`;
    the last may be smaller."""
    all_labels = torch.as_tensor(labels, dtype=torch.int64)
    for step in range(start, steps):
        lo, hi = step * batch_size, min((step + 1) * batch_size, len(epoch.order))
        x = torch.from_numpy(pillow_augment(images_nhwc, epoch, lo, hi)).permute(0, 3, 1, 2)
        yield reference_normalize(x.contiguous()).to(device), all_labels[epoch.order[lo:hi]].to(device)
