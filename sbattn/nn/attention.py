"""Channel attention blocks: Shift-and-Balance (SB) and Squeeze-and-Excitation (SE).

Both squeeze x (N, C, H, W) to z = mean over H and W, then run the same two-layer branch

    a = act(BN_C(Linear(h -> C)(ReLU(BN_h(Linear(C -> h)(z))))))      h = int(ratio * C)

SB shifts the trunk by the branch, balanced by a learned per-channel factor: y = x + lambda * a.
SE scales the trunk by the branch through a sigmoid gate:                   y = x * a.

Both take timm's layer arguments as well (rd_ratio, rd_channels, rd_divisor, act_layer, gate_layer, device,
dtype), so that timm builds them wherever it takes an attention or SE layer; and both trace: torch.fx (the
layout-dependent operations and the batch check are leaves, decided as the graph runs), torch.export and ONNX.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Callable

import torch
import torch.fx
from torch import nn

from .ops import add_per_channel, spatial_mean

__all__ = [
    "AttentionBranch", "ShiftBalance", "SqueezeExcite", "LAMBDA_INITS", "create_attention", "register_attention",
    "list_attention", "list_activations", "get_attention", "is_attention", "hidden_channels", "reduced_channels",
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


def reduced_channels(channels: int, ratio: float, rd_channels: int | None = None,
                     rd_divisor: int | None = None) -> int:
    """The hidden width under timm's names: rd_channels when given; else int(ratio * C), or, with rd_divisor,
    ratio * C rounded to a multiple of it as timm's SEModule rounds (never below the divisor)."""
    if rd_channels:
        return int(rd_channels)
    if rd_divisor is None:
        return hidden_channels(channels, ratio)
    return max(rd_divisor, int(ratio * channels + rd_divisor / 2) // rd_divisor * rd_divisor)


_HIDDEN_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU,
                       "mish": nn.Mish, "hard_swish": nn.Hardswish, "leaky_relu": nn.LeakyReLU}


def hidden_activation(act_layer: str | type[nn.Module] | nn.Module | None) -> nn.Module:
    """The branch's hidden activation as a module: ReLU (in place) by default, as timm's act_layer otherwise."""
    if act_layer is None:
        return nn.ReLU(inplace=True)
    if isinstance(act_layer, nn.Module):
        return act_layer
    if isinstance(act_layer, str):
        if act_layer.lower() not in _HIDDEN_ACTIVATIONS:
            raise ValueError(f"unknown act_layer {act_layer!r}: use a module class or one of "
                             f"{', '.join(_HIDDEN_ACTIVATIONS)}")
        act_layer = _HIDDEN_ACTIVATIONS[act_layer.lower()]
    try:
        return act_layer(inplace=True)
    except TypeError:  # an activation without an in-place form
        return act_layer()


def gate_function(gate_layer, default: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """(function, name) for a block's gate: one of list_activations() by name, or a module class or callable
    (timm's gate_layer)."""
    if gate_layer is None or isinstance(gate_layer, str):
        name = default if gate_layer is None else gate_layer
        return get_activation(name), name
    name = getattr(gate_layer, "__name__", type(gate_layer).__name__)
    return (gate_layer() if isinstance(gate_layer, type) else gate_layer), name


class AttentionBranch(nn.Sequential):
    """The excitation MLP on the squeezed vector: Linear -> [BN] -> ReLU -> Linear -> [BN], on (N, C).

    hidden: the hidden width (default int(ratio * C)); act_layer: the hidden activation (default ReLU).
    """

    def __init__(self, channels: int, ratio: float = 0.5, use_bn: bool = True, *, hidden: int | None = None,
                 act_layer=None, device=None, dtype=None):
        hidden = hidden_channels(channels, ratio) if hidden is None else hidden
        dd = {"device": device, "dtype": dtype}
        norm = (lambda n: nn.BatchNorm1d(n, **dd)) if use_bn else (lambda n: nn.Identity())
        super().__init__(
            nn.Linear(channels, hidden, **dd), norm(hidden), hidden_activation(act_layer),
            nn.Linear(hidden, channels, **dd), norm(channels),
        )
        self.use_bn = use_bn

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_bn:
            z = _batch_of_two_in_training(z, self[1])
        if isinstance(z, torch.fx.Proxy):
            # A torch.fx graph holds no autocast region, and its tools may swap the layers (quantisation, whose
            # Linear has no weight tensor): traced, the branch is its plain layers, under the graph's autocast.
            return super().forward(z)
        # In the weights' own precision: on (N, C), autocast's casts would cost more than the arithmetic.
        z = z.to(self[0].weight.dtype)
        autocast = torch.is_autocast_enabled(z.device.type)
        with torch.autocast(z.device.type, enabled=False) if autocast else contextlib.nullcontext():
            return super().forward(z)


def _batch_of_two_in_training(z: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """z, or the plain-words error for one sample in training. A leaf of torch.fx graphs (torch.fx.wrap below),
    so that a traced model still checks the batch it is given, in the mode it is in then."""
    if norm.training and z.shape[0] == 1:
        raise ValueError("attention block got a batch of 1 sample in training mode: its BatchNorm needs at least "
                         "2 samples per batch to compute statistics; train with batch size >= 2 or call "
                         "model.eval()")
    return z


# Leaves of torch.fx graphs: their forms depend on the tensor's device, dtype and layout (ops.py), which a symbolic
# trace cannot see; as leaves, a traced model picks the form for each tensor it runs on, as the block does.
torch.fx.wrap("spatial_mean")
torch.fx.wrap("add_per_channel")
torch.fx.wrap("_batch_of_two_in_training")


class ShiftBalance(nn.Module):
    """Shift-and-Balance attention (arXiv 2103.13080): y = x + lambda * act(branch(mean_hw(x))).

    lambda_init: "normal" (standard normal, the reference implementation's), "zeros" (the block starts as the
    identity), "ones", or a number every channel starts at.

    timm's layer conventions are accepted too, so that the class, or a functools.partial of it, can be given to
    timm as an attention or SE layer: rd_ratio (the same as ratio; it wins when both are given, as a timm model
    passes its own), rd_channels, rd_divisor, act_layer (the hidden activation), gate_layer (act: a name of
    list_activations(), or a module class), and the factory arguments device and dtype.
    """

    def __init__(self, channels: int, ratio: float = 0.5, activation: str = "tanh",
                 lambda_init: str | float = "normal", use_bn: bool = True, *, rd_ratio: float | None = None,
                 rd_channels: int | None = None, rd_divisor: int | None = None, act_layer=None, gate_layer=None,
                 device=None, dtype=None):
        super().__init__()
        self.act, self.activation = gate_function(gate_layer, activation)
        hidden = reduced_channels(channels, ratio if rd_ratio is None else rd_ratio, rd_channels, rd_divisor)
        lam = _init_lambda(channels, lambda_init, device, dtype)  # drawn before the branch, as the reference does
        self.branch = AttentionBranch(channels, use_bn=use_bn, hidden=hidden, act_layer=act_layer, device=device,
                                      dtype=dtype)
        self.lam = nn.Parameter(lam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.branch(spatial_mean(x)))
        return add_per_channel(x, self.lam * a)  # in the trunk's dtype: autocast keeps the trunk in bf16/fp16

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation: y = x * sigmoid(branch(mean_hw(x))).

    use_bn=True is the reference implementation's variant (BatchNorm in the branch); use_bn=False is the original
    SE of Hu et al. timm's names are accepted as by ShiftBalance (gate_layer replaces the sigmoid).
    """

    def __init__(self, channels: int, ratio: float = 0.5, use_bn: bool = True, *, rd_ratio: float | None = None,
                 rd_channels: int | None = None, rd_divisor: int | None = None, act_layer=None, gate_layer=None,
                 device=None, dtype=None):
        super().__init__()
        self.gate, self.gate_name = gate_function(gate_layer, "sigmoid")
        hidden = reduced_channels(channels, ratio if rd_ratio is None else rd_ratio, rd_channels, rd_divisor)
        self.branch = AttentionBranch(channels, use_bn=use_bn, hidden=hidden, act_layer=act_layer, device=device,
                                      dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate(self.branch(spatial_mean(x)))
        return x * gate.to(x.dtype)[:, :, None, None]

    def extra_repr(self) -> str:
        named = self.gate_name != "sigmoid" and not isinstance(self.gate, nn.Module)  # a module shows itself
        return f"gate={self.gate_name}" if named else ""


LAMBDA_INITS = ("normal", "zeros", "ones")  # or a number every channel starts at


def _init_lambda(channels: int, init: str | float, device=None, dtype=None) -> torch.Tensor:
    dd = {"device": device, "dtype": dtype}
    if init == "normal":
        return torch.randn(channels, **dd)
    if init == "zeros":
        return torch.zeros(channels, **dd)
    if init == "ones":
        return torch.ones(channels, **dd)
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return torch.full((channels,), float(init), **dd)
    raise ValueError(f"unknown lambda_init {init!r}: use {', '.join(map(repr, LAMBDA_INITS))} or a number")


# A kind's builder: a block class, or a callable with block_type() naming the class it builds (nn/zoo.py).
_ATTENTION: dict[str, Callable[..., nn.Module]] = {"sb": ShiftBalance, "se": SqueezeExcite}
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


def get_attention(kind: str) -> Callable[..., nn.Module]:
    """The block class (or builder) registered as `kind`; ValueError naming the choices when there is none."""
    try:
        return _ATTENTION[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attention {kind!r}: choose one of none, {', '.join(_ATTENTION)}") from None


def _block_type(builder: Callable[..., nn.Module]) -> type | None:
    if isinstance(builder, type):
        return builder
    block_type = getattr(builder, "block_type", None)
    return block_type() if block_type is not None else None


def is_attention(module: nn.Module) -> bool:
    """Whether `module` is one of the registered attention blocks."""
    return isinstance(module, tuple(t for t in map(_block_type, _ATTENTION.values()) if t is not None))


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
