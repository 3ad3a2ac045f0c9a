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

from .ops import add_per_channel, spatial_mean

__all__ = [
    "AttentionBranch", "ShiftBalance", "SqueezeExcite", "LAMBDA_INITS", "create_attention", "register_attention",
    "list_attention", "list_activations", "get_attention", "is_attention", "hidden_channels",
]


def _softmax_over_channels(a: torch.Tensor) -> torch.Tensor:
    return torch.softmax(a, dim=1)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "softmax": _softmax_over_channels,
    "linear": lambda a: a,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}: choose one of {', '.join(_ACTIVATIONS)}") from None


def list_activations() -> list[str]:
    """SB's activations by name, in the reference implementation's table order."""
    return list(_ACTIVATIONS)


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

    lambda_init: "normal" (standard normal, the reference implementation's), "zeros" (the block starts as the identity),
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

    use_bn=True is the reference implementation's variant (BatchNorm in the branch); use_bn=False is the original SE of Hu et al.
    """

    def __init__(self, channels: int, ratio: float = 0.5, use_bn: bool = True):
        super().__init__()
        self.branch = AttentionBranch(channels, ratio, use_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.branch(spatial_mean(x)))
        return x * gate.to(x.dtype)[:, :, None, None]


LAMBDA_INITS = ("normal", "zeros", "ones")  # or a number every channel starts at


def _init_lambda(channels: int, init: str | float) -> torch.Tensor:
    if init == "normal":
        return torch.randn(channels)
    if init == "zeros":
        return torch.zeros(channels)
    if init == "ones":
        return torch.ones(channels)
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return torch.full((channels,), float(init))
    raise ValueError(f"unknown lambda_init {init!r}: use {', '.join(map(repr, LAMBDA_INITS))} or a number")


_ATTENTION: dict[str, type[nn.Module]] = {"sb": ShiftBalance, "se": SqueezeExcite}
MODEL_WIDE_OPTIONS = ("activation", "lambda_init")


def register_attention(name: str):
    """Class decorator: make a block available under `name` to create_attention, attach, the models, and the
    command line's --attention (train and the suites)."""
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        _ATTENTION[name] = cls
        return cls
    return add


def list_attention() -> list[str]:
    """The registered attention kinds ("sb", "se", ...), in registration order; "none" is not one of them."""
    return list(_ATTENTION)


def get_attention(kind: str) -> type[nn.Module]:
    """The block class registered as `kind`; ValueError naming the choices when there is none."""
    try:
        return _ATTENTION[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attention {kind!r}: choose one of none, {', '.join(_ATTENTION)}") from None


def is_attention(module: nn.Module) -> bool:
    """Whether `module` is one of the registered attention blocks."""
    return isinstance(module, tuple(_ATTENTION.values()))


def create_attention(kind: str | None, channels: int, **options) -> nn.Module | None:
    """Build an attention block by name ("sb", "se", ...); None or "none" gives None.

    The SB-specific options a model hands to every kind (MODEL_WIDE_OPTIONS, as the reference's --activation is
    given to SE runs too) are dropped for a block that does not take them; any other unknown option is an error.
    """
    if kind is None or kind == "none":
        return None
    cls = get_attention(kind)
    accepted = inspect.signature(cls).parameters
    options = {k: v for k, v in options.items() if k in accepted or k not in MODEL_WIDE_OPTIONS}
    return cls(channels, **options)
