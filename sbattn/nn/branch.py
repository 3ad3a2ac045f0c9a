"""The excitation branch SB and SE share, its activations, and timm's SE options mapped onto it.

    a = gate(norm_C(Linear(h -> C)(act(norm_h(Linear(C -> h)(z))))))      z = mean_hw(x), h the hidden width

The norms are the reference implementation's BatchNorm1d after both layers (branch_norm="bn"), BatchNorm after the
hidden layer alone (branch_norm="hidden_bn", where timm's SEModule puts its norm_layer), or none ("none", timm's
and Hu et al.'s SE; it trains at a batch of 1). Scriptable: torch.jit.script takes the branch and both blocks.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Union, cast

import torch
import torch.fx
from torch import nn

__all__ = ["AttentionBranch", "BRANCH_NORMS", "branch_norm_kind", "get_activation", "list_activations",
           "reduced_channels", "hidden_activation", "gate_module", "LayerArg", "GateArg",
           "NormArg", "DeviceLike", "DTypeLike"]

# The blocks' timm-style arguments, as annotations (of __init__ alone: TorchScript compiles forward, never these).
# act_layer, force_act_layer: a name (relu, silu, ...), a module class or factory, or a module.
LayerArg = Union[str, nn.Module, Callable[..., nn.Module], None]
# gate_layer: as LayerArg, or a plain function of the tensor (torch.sigmoid).
GateArg = Union[str, nn.Module, Callable[..., Any], None]
# norm_layer: a BatchNorm class (or factory) or its name.
NormArg = Union[str, Callable[..., nn.Module], None]
DeviceLike = Union[torch.device, str, int, None]
DTypeLike = Optional[torch.dtype]

BRANCH_NORMS = ("bn", "hidden_bn", "none")

# SB's activations (its gate) as modules, so that a block holds them as layers (torch.jit.script needs that);
# the reference implementation's table order first.
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "softmax": lambda: nn.Softmax(dim=1),
    "linear": nn.Identity,
    "hard_sigmoid": nn.Hardsigmoid,  # MobileNetV3's and GhostNet's SE gate
}
_GATE_ALIASES = {"identity": "linear", "hardsigmoid": "hard_sigmoid"}  # timm's spellings


def get_activation(name: str) -> nn.Module:
    """SB's activation `name` (one of list_activations(), or timm's spelling of one) as a new module."""
    try:
        return _ACTIVATIONS[_GATE_ALIASES.get(name, name)]()
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}: choose one of {', '.join(_ACTIVATIONS)}") from None


def list_activations() -> list[str]:
    """SB's activations by name, in the reference implementation's table order, then hard_sigmoid."""
    return list(_ACTIVATIONS)


def gate_module(gate_layer: GateArg, default: str) -> tuple[nn.Module, str]:
    """(module, name) for a block's gate: an activation by name (list_activations(), timm's names for them), a
    module class or instance (timm's gate_layer), or a plain function."""
    if gate_layer is None or isinstance(gate_layer, str):
        name = _GATE_ALIASES.get(gate_layer, gate_layer) if gate_layer is not None else default
        return get_activation(name), name
    if isinstance(gate_layer, type) and issubclass(gate_layer, nn.Module):
        return gate_layer(), gate_layer.__name__
    if isinstance(gate_layer, nn.Module):
        return gate_layer, type(gate_layer).__name__
    if callable(gate_layer):
        return _Function(gate_layer), getattr(gate_layer, "__name__", type(gate_layer).__name__)
    raise ValueError(f"gate_layer {gate_layer!r} is neither an activation's name, a module nor a function")


class _Function(nn.Module):
    """A plain function as a layer (a gate given as torch.sigmoid, say); not scriptable."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fn(a)


def reduced_channels(channels: int, ratio: float, rd_channels: Optional[int] = None,
                     rd_divisor: Optional[int] = None, rd_round_fn: Optional[Callable[[float], float]] = None) -> int:
    """The hidden width under timm's names: rd_channels when given; else rd_round_fn(ratio * C) (timm's
    EfficientNet SE), or ratio * C rounded to a multiple of rd_divisor as timm's SEModule rounds (never below the
    divisor), or int(ratio * C)."""
    if rd_channels:
        return int(rd_channels)
    if rd_round_fn is not None:
        hidden = int(rd_round_fn(channels * ratio))
        if hidden < 1:
            raise ValueError(f"rd_round_fn({channels} * {ratio}) = {hidden}: the branch needs a hidden unit")
        return hidden
    if rd_divisor is not None:
        return max(rd_divisor, int(ratio * channels + rd_divisor / 2) // rd_divisor * rd_divisor)
    hidden = int(ratio * channels)
    if hidden < 1:
        raise ValueError(f"ratio {ratio} leaves no hidden unit for {channels} channels "
                         f"(int(ratio * channels) = {hidden}); use ratio >= {1 / channels:.4g}")
    return hidden


_HIDDEN_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU,
                       "mish": nn.Mish, "hard_swish": nn.Hardswish, "leaky_relu": nn.LeakyReLU}


def hidden_activation(act_layer: LayerArg) -> nn.Module:
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


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def branch_norm_kind(use_bn: bool = True, branch_norm: Optional[str] = None, norm_layer: NormArg = None,
                  round_chs_fn: Optional[Callable[..., Any]] = None) -> str:
    """The branch's norms (one of BRANCH_NORMS) from the block's options: branch_norm when given, else timm's
    norm_layer (BatchNorm maps to "hidden_bn", where timm's SEModule puts it), else use_bn."""
    if round_chs_fn is not None:
        raise ValueError("round_chs_fn is timm's EfficientNet builder's channel rounding, not an SE layer's option; "
                         "give the hidden width's rounding as rd_round_fn")
    if norm_layer is not None and norm_layer is not nn.Identity:
        is_bn = (isinstance(norm_layer, type) and issubclass(norm_layer, _BATCH_NORMS)
                 or norm_layer in ("batchnorm", "batchnorm2d", "bn"))
        if not is_bn:
            raise ValueError(f"norm_layer {getattr(norm_layer, '__name__', norm_layer)!r}: the branch works on "
                             f"(N, C) vectors, where only BatchNorm applies (branch_norm='hidden_bn'); use "
                             f"branch_norm= one of {', '.join(BRANCH_NORMS)}")
        if branch_norm not in (None, "hidden_bn"):
            raise ValueError(f"norm_layer={norm_layer.__name__ if isinstance(norm_layer, type) else norm_layer} "
                             f"asks for branch_norm='hidden_bn', and branch_norm={branch_norm!r} was given too")
        return "hidden_bn"
    if branch_norm is None:
        return "bn" if use_bn else "none"
    if branch_norm not in BRANCH_NORMS:
        raise ValueError(f"unknown branch_norm {branch_norm!r}: choose one of {', '.join(BRANCH_NORMS)}")
    return branch_norm


class AttentionBranch(nn.Sequential):
    """The excitation MLP on the squeezed vector: Linear -> [BN] -> act -> Linear -> [BN], on (N, C).

    hidden: the hidden width (default int(ratio * C)); act_layer: the hidden activation (default ReLU);
    branch_norm: "bn" (after both layers, the reference's), "hidden_bn" or "none" (default from use_bn).
    """

    def __init__(self, channels: int, ratio: float = 0.5, use_bn: bool = True, *, hidden: Optional[int] = None,
                 act_layer: LayerArg = None, branch_norm: Optional[str] = None, device: DeviceLike = None,
                 dtype: DTypeLike = None) -> None:
        hidden = reduced_channels(channels, ratio) if hidden is None else hidden
        norm_kind = branch_norm_kind(use_bn, branch_norm)
        dd: dict[str, Any] = {"device": device, "dtype": dtype}

        def norm(n: int, wanted: bool) -> nn.Module:
            return nn.BatchNorm1d(n, **dd) if wanted else nn.Identity()
        super().__init__(
            nn.Linear(channels, hidden, **dd), norm(hidden, norm_kind != "none"), hidden_activation(act_layer),
            nn.Linear(hidden, channels, **dd), norm(channels, norm_kind == "bn"),
        )
        self.use_bn = norm_kind != "none"  # some BatchNorm in the branch: a batch of 1 cannot train
        self.branch_norm = norm_kind

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this side alone: no fx, no autocast region
            if self.use_bn and self.training and z.shape[0] == 1:
                raise ValueError("attention block got a batch of 1 sample in training mode: its BatchNorm needs at "
                                 "least 2 samples per batch")
        else:
            if self.use_bn:
                z = _batch_of_two_in_training(z, self[1])
            if isinstance(z, torch.fx.Proxy):
                # A torch.fx graph holds no autocast region, and its tools may swap the layers (quantisation, whose
                # Linear has no weight tensor): traced, the branch is its plain layers, under the graph's autocast.
                return self._layers(z)
            # In the weights' own precision: on (N, C), autocast's casts would cost more than the arithmetic.
            z = z.to(cast(nn.Linear, self[0]).weight.dtype)
            autocast = torch.is_autocast_enabled(z.device.type)
            with torch.autocast(z.device.type, enabled=False) if autocast else contextlib.nullcontext():
                return self._layers(z)
        return self._layers(z)

    def _layers(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self:
            z = layer(z)
        return z

    def extra_repr(self) -> str:
        return "" if self.branch_norm == "bn" else f"branch_norm={self.branch_norm}"


def _batch_of_two_in_training(z: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """z, or the plain-words error for one sample in training. A leaf of torch.fx graphs (torch.fx.wrap below),
    so that a traced model still checks the batch it is given, in the mode it is in then."""
    if norm.training and z.shape[0] == 1:
        raise ValueError("attention block got a batch of 1 sample in training mode: its BatchNorm needs at least "
                         "2 samples per batch to compute statistics; train with batch size >= 2, call "
                         "model.eval(), or build the block with branch_norm='none'")
    return z


torch.fx.wrap("_batch_of_two_in_training")
