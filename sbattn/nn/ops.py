"""Per-channel operations on (N, C, H, W) tensors, with a faster form for channels-last bf16 tensors on the CPU."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["spatial_mean", "add_per_channel"]


def spatial_mean(x: torch.Tensor, channels: Optional[int] = None) -> torch.Tensor:
    """x (N, C, H, W) averaged over H and W, as (N, C); x of another shape, or of C other than `channels` when
    given, is a ValueError naming the layout expected (an attention block's first operation on its input)."""
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        wanted = "C" if channels is None else str(channels)
        raise ValueError(f"attention block expects (N, C, H, W) input with C = {wanted} channels; got shape "
                         f"{list(x.shape)} (an NHWC tensor? permute it to NCHW; channels-last memory is fine)")
    if not _cpu_bf16_channels_last(x):
        return x.mean((2, 3))
    # As a matrix product over the memory's (N, HW, C) view: the plain reduction's backward, a broadcast add into
    # a channels-last bf16 gradient, runs several times slower on the CPU. Ones on the left, so that the
    # gradient comes back channels-last too. Summed, then divided: 1 / HW in bf16 would be rounded.
    n, c, h, w = x.shape
    return (x.new_ones(1, h * w) @ _pixel_rows(x)).view(n, c) / (h * w)


def add_per_channel(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) + shift (N, C) broadcast over H and W, in x's dtype and memory format."""
    shift = shift.to(x.dtype)
    if not _cpu_bf16_channels_last(x):
        return x + shift[:, :, None, None]
    # A rank-1 update (baddbmm), for the reason in spatial_mean: on the CPU, this broadcast add over a
    # channels-last bf16 tensor runs about 9x slower than the same add as a GEMM.
    n, c, h, w = x.shape
    y = torch.baddbmm(_pixel_rows(x), x.new_ones(n, h * w, 1), shift[:, None, :])
    return y.view(n, h, w, c).permute(0, 3, 1, 2)


def _pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """A channels-last x (N, C, H, W) as the (N, HW, C) matrix its memory already is (a view, no copy)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


def _cpu_bf16_channels_last(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
