"""Evaluation: every test sample counted once, on an inference-only copy of the model that is faster.

The copy folds each BatchNorm2d into the convolution before it (the same function, in eval mode) and, on a
CPU, runs channels-last, where oneDNN's convolutions are fastest for inference.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..data import eval_batches

__all__ = ["evaluate", "fold_batchnorm", "inference_copy", "memory_format", "sum_dtype"]


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype that running sums of losses and counts use: float64 keeps counts exact; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every Conv2d -> BatchNorm2d pair (within a Sequential) folded into one conv."""
    model = copy.deepcopy(model).eval()
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm) and bn.track_running_stats:
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout images and activations train and evaluate fastest in on `device`.

    Channels-last on CUDA and on the CPU, where it also avoids max pooling's NCHW kernel (about 10x slower):
    measured on 2 cores, VGG16-SB trains 1.09x faster in bf16 and 1.06x in fp32, 1.17x at width 0.25.
    """
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def inference_copy(model: nn.Module, device: torch.device) -> tuple[nn.Module, torch.memory_format]:
    """The fastest equivalent model for evaluation on `device`, and the input layout it wants."""
    fmt = memory_format(device)
    return fold_batchnorm(model).to(memory_format=fmt), fmt


@torch.no_grad()
def evaluate(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
             amp_dtype: torch.dtype | None = None, rank: int = 0, world_size: int = 1) -> tuple[float, float]:
    """(mean loss, accuracy) over every sample, each counted once (across ranks under torchrun)."""
    device = images_u8.device
    fast, fmt = inference_copy(model, device)
    loss_sum, correct, seen = torch.zeros(3, dtype=sum_dtype(device), device=device).unbind()
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for x, y in eval_batches(images_u8, labels, batch_size, rank=rank, world_size=world_size):
            out = fast(x.contiguous(memory_format=fmt)).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
    totals = torch.stack([loss_sum, correct, seen])
    if world_size > 1:
        torch.distributed.all_reduce(totals)
    loss_sum, correct, seen = totals.tolist()
    return loss_sum / seen, correct / seen
