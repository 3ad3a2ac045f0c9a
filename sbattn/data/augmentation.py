"""The reference implementation's CIFAR-10 training transforms on whole uint8 batches on the training device:
RandomCrop(32, padding=4), RandomHorizontalFlip(0.5) and RandomRotation(15) (nearest, zero fill) become one
source-pixel index per output pixel and a single gather; all randomness comes from one ``torch.Generator``.
"airbench" is airbench94's: a translation by up to 2 pixels with reflect padding, and the flip its caller gives
(the alternating flip, ``alternating_flips``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUGMENTS = ("reference", "standard", "none", "airbench")
AUGMENT_ALIASES = {"seed": "reference"}   # former names, still accepted
PAD = 4            # RandomCrop padding
MAX_ANGLE = 15.0   # RandomRotation degrees
AIRBENCH_SHIFT = 2  # airbench's translation, reflect padded


def canonical_augment(mode: str) -> str:
    """The canonical name of an augmentation mode: an alias (``AUGMENT_ALIASES``) mapped, any other name as is."""
    return AUGMENT_ALIASES.get(mode, mode)


@dataclass
class AugmentParams:
    """One batch's random draws, all tensors of length N on the images' device."""

    dy: torch.Tensor             # int64, crop offset of the source row, in [-PAD, PAD]
    dx: torch.Tensor             # int64, crop offset of the source column, in [-PAD, PAD]
    flip: torch.Tensor           # bool, horizontal flip
    angle: torch.Tensor | None   # degrees in [-MAX_ANGLE, MAX_ANGLE], counter-clockwise; None: no rotation
    reflect: bool = False        # pixels past the edge mirror the image (airbench); else they are zero

    def __getitem__(self, part: slice) -> "AugmentParams":
        return AugmentParams(self.dy[part], self.dx[part], self.flip[part],
                             None if self.angle is None else self.angle[part], self.reflect)


def _check_mode(mode: str) -> str:
    """The canonical name of ``mode``; ValueError when it names no augmentation."""
    mode = canonical_augment(mode)
    if mode not in AUGMENTS:
        raise ValueError(f"unknown augment mode {mode!r}; choose one of {', '.join(AUGMENTS)}")
    return mode


def sample_params(n: int, generator: torch.Generator, mode: str = "reference") -> AugmentParams:
    """Draw crop offsets, flips and (mode "reference") angles for n images, on the generator's device."""
    mode = _check_mode(mode)
    device = generator.device
    if mode == "none":
        zeros = torch.zeros(n, dtype=torch.int64, device=device)
        return AugmentParams(zeros, zeros, torch.zeros(n, dtype=torch.bool, device=device), None)
    shift = AIRBENCH_SHIFT if mode == "airbench" else PAD
    crop = torch.randint(-shift, shift + 1, (2, n), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    if mode == "airbench":
        return AugmentParams(crop[0], crop[1], flip, None, reflect=True)
    angle = None
    if mode == "reference":
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


def _mirrored(c: torch.Tensor, size: int) -> torch.Tensor:
    """Coordinates past either edge reflected back inside (reflect padding: -1 -> 1, size -> size - 2)."""
    c = c.abs()
    return torch.where(c > size - 1, 2 * (size - 1) - c, c)


def _reflect_index(p: AugmentParams, h: int, w: int) -> torch.Tensor:
    """(N, h*w) int64: each output pixel's source in the image itself, for a translation by (dy, dx) of the image
    reflect-padded, flipped where ``p.flip`` says (reflection and mirroring commute)."""
    n = p.flip.shape[0]
    ys = torch.arange(h, device=p.flip.device)
    xs = torch.arange(w, device=p.flip.device)
    rows = _mirrored(ys + p.dy.view(n, 1), h) * w
    cols = _mirrored(xs + p.dx.view(n, 1), w)
    cols = torch.where(p.flip.view(n, 1), (w - 1) - cols, cols)
    return (rows.view(n, h, 1) + cols.view(n, 1, w)).view(n, h * w)


def apply_params(images_u8: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply crop, then flip, then rotation as drawn in ``params`` to a uint8 NCHW batch, with one gather."""
    n, c, h, w = images_u8.shape
    if n == 0:
        return images_u8
    if params.reflect:
        idx = _reflect_index(params, h, w)
        return images_u8.reshape(n, c, h * w).gather(2, idx.unsqueeze(1).expand(n, c, h * w)).view(n, c, h, w)
    idx = _source_index(params, h, w)
    padded = torch.nn.functional.pad(images_u8, (1, 1, 1, 1)).view(n, c, (h + 2) * (w + 2))
    return padded.gather(2, idx.unsqueeze(1).expand(n, c, h * w)).view(n, c, h, w)


def augment(images_u8: torch.Tensor, generator: torch.Generator, mode: str = "reference",
            chunk: int | None = None, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Augment a uint8 NCHW batch: "reference" crop+flip+rotate, "standard" crop+flip, "none" returns the input.

    chunk: apply the draws (made at once for the whole batch) this many images at a time, which bounds the memory
    of the index tables (about 50 bytes a pixel) for a batch as large as an epoch; the result is the same."""
    mode = _check_mode(mode)
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
    params = sample_params(images_u8.shape[0], generator, mode)
    if flip is not None:  # the caller's flips (airbench's alternating flip) in place of the drawn ones
        params.flip = flip
    if chunk is None or images_u8.shape[0] <= chunk:
        return apply_params(images_u8, params)
    return torch.cat([apply_params(images_u8[lo:lo + chunk], params[lo:lo + chunk])
                      for lo in range(0, images_u8.shape[0], chunk)])
