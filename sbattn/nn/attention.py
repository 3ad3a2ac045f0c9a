"""Channel attention blocks: Shift-and-Balance (SB) and Squeeze-and-Excitation (SE).

Both squeeze x (N, C, H, W) to z = mean over H and W, then run the same two-layer branch (branch.py)

    a = act(BN_C(Linear(h -> C)(ReLU(BN_h(Linear(C -> h)(z))))))      h = int(ratio * C)

SB shifts the trunk by the branch, balanced by a learned per-channel factor: y = x + lambda * a.
SE scales the trunk by the branch through a sigmoid gate:                   y = x * a.

Both take timm's SE layer arguments as well (rd_ratio, rd_channels, rd_divisor, rd_round_fn, act_layer,
force_act_layer, gate_layer, norm_layer, device, dtype), so that timm builds them wherever it takes an attention or
SE layer; and both trace: torch.fx (the layout-dependent operations and the batch check are leaves, decided as the
graph runs), torch.export, ONNX and torch.jit.script.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.fx
from torch import nn

from .branch import (AttentionBranch, DeviceLike, DTypeLike, GateArg, LayerArg, NormArg, branch_norm_kind, gate_module,
                     get_activation, list_activations, reduced_channels)
from .ops import add_per_channel, spatial_mean

__all__ = [
    "AttentionBranch", "ShiftBalance", "SqueezeExcite", "LAMBDA_INITS", "create_attention", "register_attention",
    "list_attention", "list_activations", "get_activation", "get_attention", "is_attention",
    "reduced_channels",
]


# Leaves of torch.fx graphs: their forms depend on the tensor's device, dtype and layout (ops.py), which a symbolic
# trace cannot see; as leaves, a traced model picks the form for each tensor it runs on, as the block does.
torch.fx.wrap("spatial_mean")
torch.fx.wrap("add_per_channel")


def make_branch(channels: int, ratio: float, use_bn: bool, rd_ratio: Optional[float], rd_channels: Optional[int],
                rd_divisor: Optional[int], rd_round_fn: Optional[Callable[[float], float]], act_layer: LayerArg,
                force_act_layer: LayerArg, norm_layer: NormArg, branch_norm: Optional[str],
                round_chs_fn: Optional[Callable[..., Any]], device: DeviceLike, dtype: DTypeLike) -> AttentionBranch:
    """A block's branch from its options, timm's among them: rd_ratio wins over ratio (a timm model passes its
    own), force_act_layer over act_layer (as in timm's EfficientNet SE), norm_layer maps to a branch_norm."""
    hidden = reduced_channels(channels, ratio if rd_ratio is None else rd_ratio, rd_channels, rd_divisor,
                              rd_round_fn)
    norm_kind = branch_norm_kind(use_bn, branch_norm, norm_layer, round_chs_fn)
    return AttentionBranch(channels, hidden=hidden, act_layer=force_act_layer or act_layer, branch_norm=norm_kind,
                           device=device, dtype=dtype)


class ShiftBalance(nn.Module):
    """Shift-and-Balance attention (arXiv 2103.13080): y = x + lambda * act(branch(mean_hw(x))).

    lambda_init: "normal" (standard normal, the reference implementation's), "zeros" (the block starts as the
    identity), "ones", or a number every channel starts at. branch_norm: "bn" (the reference's BatchNorm after
    both layers; the default, from use_bn=True), "hidden_bn", or "none" (no BatchNorm: trains at a batch of 1).

    timm's SE layer conventions are accepted too, so that the class, or a functools.partial of it, can be given to
    timm as an attention or SE layer: rd_ratio (the same as ratio; it wins when both are given, as a timm model
    passes its own), rd_channels, rd_divisor, rd_round_fn, act_layer (the hidden activation), force_act_layer
    (overrides act_layer), gate_layer (act: a name of list_activations(), or a module class), norm_layer
    (BatchNorm: branch_norm="hidden_bn"), and the factory arguments device and dtype. When timm builds the block
    with no ratio of its own, the hidden width is the reference's ratio 0.5, eight times timm's SE (1/16):
    docs/interop.md says what that adds per network.
    """

    def __init__(self, channels: int, ratio: float = 0.5, activation: str = "tanh",
                 lambda_init: str | float = "normal", use_bn: bool = True, *, rd_ratio: Optional[float] = None,
                 rd_channels: Optional[int] = None, rd_divisor: Optional[int] = None,
                 rd_round_fn: Optional[Callable[[float], float]] = None, act_layer: LayerArg = None,
                 force_act_layer: LayerArg = None, gate_layer: GateArg = None, norm_layer: NormArg = None,
                 branch_norm: Optional[str] = None, round_chs_fn: Optional[Callable[..., Any]] = None,
                 device: DeviceLike = None, dtype: DTypeLike = None) -> None:
        super().__init__()
        self.act, self.activation = gate_module(gate_layer, activation)
        lam = _init_lambda(channels, lambda_init, device, dtype)  # drawn before the branch, as the reference does
        self.branch = make_branch(channels, ratio, use_bn, rd_ratio, rd_channels, rd_divisor, rd_round_fn,
                                  act_layer, force_act_layer, norm_layer, branch_norm, round_chs_fn, device, dtype)
        self.lam = nn.Parameter(lam)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.branch(spatial_mean(x, self.channels)))
        return add_per_channel(x, self.lam * a)  # in the trunk's dtype: autocast keeps the trunk in bf16/fp16

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation with the reference implementation's branch: y = x * sigmoid(branch(mean_hw(x))).

    The default (use_bn=True, branch_norm "bn") is the reference's SE, BatchNorm after both layers of the branch;
    branch_norm="none" (or use_bn=False) is the original SE of Hu et al., as timm's SEModule ("timm:se" in the
    registry). timm's names are accepted as by ShiftBalance (gate_layer replaces the sigmoid).
    """

    def __init__(self, channels: int, ratio: float = 0.5, use_bn: bool = True, *, rd_ratio: Optional[float] = None,
                 rd_channels: Optional[int] = None, rd_divisor: Optional[int] = None,
                 rd_round_fn: Optional[Callable[[float], float]] = None, act_layer: LayerArg = None,
                 force_act_layer: LayerArg = None, gate_layer: GateArg = None, norm_layer: NormArg = None,
                 branch_norm: Optional[str] = None, round_chs_fn: Optional[Callable[..., Any]] = None,
                 device: DeviceLike = None, dtype: DTypeLike = None) -> None:
        super().__init__()
        self.gate, self.gate_name = gate_module(gate_layer, "sigmoid")
        self.channels = channels
        self.branch = make_branch(channels, ratio, use_bn, rd_ratio, rd_channels, rd_divisor, rd_round_fn,
                                  act_layer, force_act_layer, norm_layer, branch_norm, round_chs_fn, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate(self.branch(spatial_mean(x, self.channels)))
        return x * gate.to(x.dtype)[:, :, None, None]


LAMBDA_INITS = ("normal", "zeros", "ones")  # or a number every channel starts at


def _init_lambda(channels: int, init: str | float, device: DeviceLike = None,
                 dtype: DTypeLike = None) -> torch.Tensor:
    dd: dict[str, Any] = {"device": device, "dtype": dtype}
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
_Builder = TypeVar("_Builder", bound=Callable[..., nn.Module])


def register_attention(name: str) -> Callable[[_Builder], _Builder]:
    """Class decorator: make a block available under `name` to create_attention, attach, the models, and the
    command line's --attention (train and the suites)."""
    def add(cls: _Builder) -> _Builder:
        _check_builder(name, cls)
        _ATTENTION[name] = cls
        return cls
    return add


def _check_builder(name: str, builder: Callable[..., nn.Module]) -> None:
    """A kind's builder takes the channel count first and `ratio` (every model hands its blocks one), or any
    option (**options): refused when it registers, in one line, rather than by a TypeError deep in a run."""
    try:
        parameters = list(inspect.signature(builder).parameters.values())
    except (TypeError, ValueError):  # not callable, or no signature to read
        raise ValueError(f"attention {name!r}: {builder!r} is not a block class or a builder") from None
    kinds = {p.kind for p in parameters}
    first = parameters[0] if parameters else None
    if first is None or first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD, first.VAR_POSITIONAL):
        raise ValueError(f"attention {name!r}: {builder!r} must take the channel count as its first argument")
    if inspect.Parameter.VAR_KEYWORD not in kinds and not any(p.name == "ratio" for p in parameters):
        raise ValueError(f"attention {name!r}: {builder!r} takes no `ratio` (every model passes its blocks' "
                         f"ratio): add the parameter, or **options")


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


def create_attention(kind: str | None, channels: int, **options: Any) -> nn.Module | None:
    """Build an attention block by name ("sb", "se", ...); None or "none" gives None.

    The SB-specific options a model hands to every kind (MODEL_WIDE_OPTIONS, as the reference's --activation is
    given to SE runs too) are dropped for a block that does not take them; any other unknown option is an error.
    """
    if kind is None or kind == "none":
        return None
    return get_attention(kind)(channels, **passed_options(kind, options))


def passed_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options a block of `kind` is built with: all but the MODEL_WIDE_OPTIONS it does not take."""
    accepted = inspect.signature(get_attention(kind)).parameters
    return {k: v for k, v in options.items() if k in accepted or k not in MODEL_WIDE_OPTIONS}
