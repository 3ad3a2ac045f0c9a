"""Channel attention blocks: Shift-and-Balance (SB) and Squeeze-and-Excitation (SE).

Both squeeze x (N, C, H, W) to z = mean over H and W, then run the same two-layer branch

    a = act(BN_C(Linear(h -> C)(ReLU(BN_h(Linear(C -> h)(z))))))      h = int(ratio * C)

SB shifts the trunk by the branch, balanced by a learned per-channel factor: y = x + lambda * a.
SE scales the trunk by the branch through a sigmoid gate:                   y = x * a.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Callable

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS", "ATTENTION", "AttentionBranch", "ShiftBalance", "SqueezeExcite",
    "create_attention", "register_attention", "hidden_channels", "spatial_mean", "add_per_channel",
]


def _softmax_over_channels(a: torch.Tensor) -> torch.Tensor:
    return torch.softmax(a, dim=1)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "softmax": _softmax_over_channels,
    "linear": lambda a: a,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}") from None


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) averaged over H and W, as (N, C)."""
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


def hidden_channels(channels: int, ratio: float) -> int:
    """Width of the branch's hidden layer, h = int(ratio * C); at least 1 or a ValueError."""
    hidden = int(ratio * channels)
    if hidden < 1:
        raise ValueError(f"ratio {ratio} leaves no hidden unit for {channels} channels "
                         f"(int(ratio * channels) = {hidden}); use ratio >= {1 / channels:.4g}")
    return hidden


class AttentionBranch(nn.Sequential):
    """The excitation MLP on the squeezed vector: Linear -> [BN] -> ReLU -> Linear -> [BN], on (N, C)."""

    def __init__(self, channels: int, ratio: float = 0.5, use_bn: bool = True):
        hidden = hidden_channels(channels, ratio)
        norm = nn.BatchNorm1d if use_bn else (lambda n: nn.Identity())
        super().__init__(
            nn.Linear(channels, hidden), norm(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels), norm(channels),
        )
        self.use_bn = use_bn

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_bn and self.training and z.shape[0] == 1:
            raise ValueError("attention block got a batch of 1 sample in training mode: its BatchNorm needs at least "
                             "2 samples per batch to compute statistics; train with batch size >= 2 or call "
                             "model.eval()")
        # In the weights' own precision: on (N, C), autocast's casts would cost more than the arithmetic.
        z = z.to(self[0].weight.dtype)
        autocast = torch.is_autocast_enabled(z.device.type)
        with torch.autocast(z.device.type, enabled=False) if autocast else contextlib.nullcontext():
            return super().forward(z)


class ShiftBalance(nn.Module):
    """Shift-and-Balance attention (arXiv 2103.13080): y = x + lambda * act(branch(mean_hw(x))).

    lambda_init: "normal" (standard normal, the seed's), "zeros" (the block starts as the identity),
    "ones", or a number every channel starts at.
    """

    def __init__(self, channels: int, ratio: float = 0.5, activation: str = "tanh",
                 lambda_init: str | float = "normal", use_bn: bool = True):
        super().__init__()
        self.act = get_activation(activation)
        self.activation = activation
        self.branch = AttentionBranch(channels, ratio, use_bn)
        self.lam = nn.Parameter(_init_lambda(channels, lambda_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.branch(spatial_mean(x)))
        return add_per_channel(x, self.lam * a)  # in the trunk's dtype: autocast keeps the trunk in bf16/fp16

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation: y = x * sigmoid(branch(mean_hw(x))).

    use_bn=True is the seed's variant (BatchNorm in the branch); use_bn=False is the original SE of Hu et al.
    """

    def __init__(self, channels: int, ratio: float = 0.5, use_bn: bool = True):
        super().__init__()
        self.branch = AttentionBranch(channels, ratio, use_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.branch(spatial_mean(x)))
        return x * gate.to(x.dtype)[:, :, None, None]


def _init_lambda(channels: int, init: str | float) -> torch.Tensor:
    if init == "normal":
        return torch.randn(channels)
    if init == "zeros":
        return torch.zeros(channels)
    if init == "ones":
        return torch.ones(channels)
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return torch.full((channels,), float(init))
    raise ValueError(f"unknown lambda_init {init!r}: use 'normal', 'zeros', 'ones' or a number")


ATTENTION: dict[str, type[nn.Module]] = {"sb": ShiftBalance, "se": SqueezeExcite}
MODEL_WIDE_OPTIONS = ("activation", "lambda_init")


def register_attention(name: str):
    """Class decorator: make a block available to create_attention, the models and the CLI under `name`."""
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        ATTENTION[name] = cls
        return cls
    return add


def create_attention(kind: str | None, channels: int, **options) -> nn.Module | None:
    """Build an attention block by name ("sb", "se", ...); None or "none" gives None.

    The SB-specific options a model hands to every kind (MODEL_WIDE_OPTIONS, as the seed's --activation is
    given to SE runs too) are dropped for a block that does not take them; any other unknown option is an error.
    """
    if kind is None or kind == "none":
        return None
    try:
        cls = ATTENTION[kind]
    except KeyError:
        raise ValueError(f"unknown attention {kind!r}: choose one of none, {', '.join(ATTENTION)}") from None
    accepted = inspect.signature(cls).parameters
    options = {k: v for k, v in options.items() if k in accepted or k not in MODEL_WIDE_OPTIONS}
    return cls(channels, **options)
