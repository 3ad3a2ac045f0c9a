"""Which arithmetic a run uses: the autocast dtype for --precision on a device, and its name in the run's files."""
from __future__ import annotations

import torch

from ..system import cpu_has_bf16

__all__ = ["resolve_precision", "precision_label", "use_true_fp32"]


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def precision_label(amp_dtype: torch.dtype | None) -> str:
    """"fp32", "bfloat16" or "float16", as the run's files and benchmarks name the arithmetic."""
    return "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")


def use_true_fp32(device: torch.device) -> None:
    """fp32 convolutions in fp32: on CUDA, cuDNN would otherwise round their inputs to TF32's 10-bit mantissa on
    Ampere and later GPUs (PyTorch's default), which the reference's GPU (a 2070) never did."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
