"""Put SB or SE attention into any network, after the modules you choose, and take it out again.

    model = torchvision_style_resnet()
    sbattn.attach(model, "sb", where=lambda name, m: name.endswith("bn2"))   # SE-ResNet's place, with SB
    sbattn.attached(model)   # ['layer1.0.bn2.attention', ...]
    sbattn.detach(model)     # the original model again

Each selected module is replaced, in its parent, by `WithAttention(module, block)`, which computes
block(module(x)); this works inside any parent, not only nn.Sequential. The selected module's parameters
then live under `<name>.module.` in the state dict; a state dict saved before attach loads all the same (its
keys are mapped as it loads), and sbattn.load_pretrained(model, state_dict) loads it strictly but for the new
blocks, saying which keys those are.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Union

import torch
import torch.fx
from torch import nn

from ..errors import SbattnError
from .attention import create_attention, is_attention, list_attention

__all__ = ["WithAttention", "attach", "detach", "attached", "infer_channels"]

Where = Union[type, tuple[type, ...], Callable[[str, nn.Module], bool], str, Iterable[str]]

# Modules that keep the channel count, so that a Sequential ending in them has its last layer's channels.
_CHANNEL_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                       nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Identity,
                       nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                       nn.AdaptiveMaxPool2d, nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)


class WithAttention(nn.Module):
    """`module` followed by an attention block: forward(x) = attention(module(x)).

    channels: the width the block was built for; given, each output of `module` is checked to be (N, channels,
    H, W) before the block takes it, with an error naming `place` (the module's name and type) when it is not.
    """

    def __init__(self, module: nn.Module, attention: nn.Module, channels: int | None = None,
                 place: str = "") -> None:
        super().__init__()
        self.module = module
        self.attention = attention
        self.channels = channels
        self.place = place or type(module).__name__
        self.register_load_state_dict_pre_hook(_keys_before_attach)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A WithAttention pickled before these existed still runs. (Not class attributes: torch.jit.script would
        # read their annotations, and cannot.)
        state.setdefault("channels", None)
        state.setdefault("place", "")
        super().__setstate__(state)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        y = self.module(*args, **kwargs)
        if self.channels is not None:
            y = _expect_nchw(y, self.channels, self.place)
        return self.attention(y)

    def __prepare_scriptable__(self) -> "WithAttention":
        # torch.jit.script cannot compile *args: it scripts the one-tensor form, which torch puts in this one's
        # place in the model (the same module and block; still a WithAttention for attached() and detach()).
        return _OneTensor(self.module, self.attention, self.channels, self.place)


class _OneTensor(WithAttention):
    """WithAttention for a module of one tensor, as torch.jit.script compiles it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x)
        channels = self.channels
        if channels is not None and (y.dim() != 4 or y.shape[1] != channels):
            raise ValueError("attention after " + self.place + " takes (N, " + str(channels) + ", H, W) tensors")
        return self.attention(y)

    def __prepare_scriptable__(self) -> "WithAttention":
        return self


def _keys_before_attach(self: WithAttention, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """A state dict saved before attach loads after it: the wrapped module's keys, `<name>.weight` then, are
    `<name>.module.weight` now (a load's pre-hook, on the copy load_state_dict makes)."""
    own = {f"module.{k}" for k in self.module.state_dict()} | {f"attention.{k}" for k in self.attention.state_dict()}
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest not in own and f"module.{rest}" in own:
            state_dict[f"{prefix}module.{rest}"] = state_dict.pop(key)


def _expect_nchw(y: object, channels: int, place: str) -> torch.Tensor:
    """y when it is an (N, channels, H, W) tensor, else a one-line ValueError naming the module before the block.
    A leaf of torch.fx graphs (torch.fx.wrap below): a symbolic trace cannot see shapes; the traced model checks."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"attention after {place} takes an (N, {channels}, H, W) tensor; the module returned "
                         f"a {type(y).__name__}")
    if y.dim() != 4 or y.shape[1] != channels:
        hint = ""
        if y.dim() == 4 and y.shape[-1] == channels:
            hint = ("; it looks channels-last (N, H, W, C), as a LayerNorm's input is in many networks: attach "
                    "after a module whose output is (N, C, H, W), such as a Conv2d, BatchNorm2d or LayerNorm2d")
        raise ValueError(f"attention after {place} takes (N, {channels}, H, W) tensors, got {tuple(y.shape)}{hint}")
    return y


torch.fx.wrap("_expect_nchw")


def infer_channels(module: nn.Module) -> int | None:
    """The channel count of `module`'s (N, C, H, W) output, or None when it cannot tell."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return module.out_channels
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d)):  # timm's BatchNormAct2d too
        return module.num_features
    if isinstance(module, nn.GroupNorm):  # timm's GroupNormAct too
        return module.num_channels
    if isinstance(module, WithAttention):
        return infer_channels(module.module)
    if isinstance(module, nn.Sequential):
        for child in reversed(module):
            channels = infer_channels(child)
            if channels is not None:
                return channels
            if not isinstance(child, _CHANNEL_PRESERVING):
                return None
    return _declared_2d_channels(module)


def _declared_2d_channels(module: nn.Module) -> int | None:
    """The width of an NCHW layer that is none of torch's 2-d classes (timm's LayerNorm2d, LayerNormAct2d and
    RmsNorm2d, torchvision's FrozenBatchNorm2d, ...): known by a class name that says 2d and the attribute that
    holds its width, without importing those libraries."""
    if "2d" not in type(module).__name__.lower():
        return None
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return int(shape[0]) if len(shape) == 1 else None
    for attribute in ("num_features", "num_channels", "out_channels"):
        value = getattr(module, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _cannot_infer(name: str, module: nn.Module) -> str:
    why = (f"cannot infer the channel count after module {name!r} ({type(module).__name__}); select a Conv2d, "
           f"BatchNorm2d, GroupNorm or LayerNorm2d, or pass channels=")
    if isinstance(module, nn.LayerNorm):
        why += ("; a LayerNorm normalises the last dimension, so in most networks it works on a channels-last "
                "(N, H, W, C) tensor, which channel attention cannot take")
    return why


def _selector(where: Where, model: nn.Module) -> Callable[[str, nn.Module], bool]:
    if isinstance(where, type) or (isinstance(where, tuple) and where and all(isinstance(t, type) for t in where)):
        return lambda name, module: isinstance(module, where)
    if callable(where):
        return where
    names = [where] if isinstance(where, str) else list(where)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError("where must be a module type, a predicate on (name, module), or a list of module names")
    known = dict(model.named_modules())
    for name in names:
        if name == "":
            raise ValueError("cannot attach after the model itself; select one of its modules")
        if name not in known:
            raise ValueError(f"the model has no module named {name!r}")
    wanted = set(names)
    return lambda name, module: name in wanted


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, module, parent) for every module that may be selected: not the root, nor inside attention."""
    found: list[tuple[str, nn.Module, nn.Module]] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            if isinstance(module, WithAttention) and child_name == "attention":
                continue
            found.append((f"{prefix}{child_name}", child, module))
            if not is_attention(child):
                visit(child, f"{prefix}{child_name}.")
    visit(model, "")
    return found


def attach(model: nn.Module, kind: str = "sb", where: Where = nn.BatchNorm2d, channels: int | None = None,
           **block_options: Any) -> nn.Module:
    """Insert an attention block (`kind`: "sb", "se" or any registered name) after each module `where` selects.

    where: a module type or tuple of types, a predicate on (name, module), or module names. The channel count
    comes from each selected module (Conv2d.out_channels, BatchNorm2d.num_features, GroupNorm.num_channels,
    a LayerNorm2d's normalized_shape, timm's norm-act layers, the last such layer of a Sequential), so blocks of
    different stages get their own widths; or from `channels`. Each block checks, as the model runs, that its
    input is (N, C, H, W) with its C, and names the module before it when not (a channels-last tensor, say). block_options go to the block (ratio, activation,
    lambda_init, use_bn). The new blocks get the selected module's device, dtype and train/eval mode.
    Returns `model`, changed in place.
    """
    if kind is None or kind == "none":
        raise ValueError("attach needs an attention kind: choose one of " + ", ".join(list_attention()))
    select = _selector(where, model)
    chosen = [(name, module, parent) for name, module, parent in _candidates(model) if select(name, module)]
    if not chosen:
        raise ValueError(f"where={where!r} selects no module of this {type(model).__name__}")
    for name, module, parent in chosen:
        if isinstance(module, WithAttention) or isinstance(parent, WithAttention):
            place = name.removesuffix(".module")
            raise ValueError(f"module {place!r} already has attention after it ({place}.attention); detach it first")
    plans = []
    for name, module, parent in chosen:
        width = channels if channels is not None else infer_channels(module)
        if width is None:
            raise ValueError(_cannot_infer(name, module))
        try:
            block = create_attention(kind, width, **block_options)
        except SbattnError:  # a missing extra: nothing to do with this module
            raise
        except ValueError as e:
            raise ValueError(f"module {name!r} ({type(module).__name__}, {width} channels): {e}") from None
        assert block is not None  # kind is a block: "none" was answered above
        like = next(module.parameters(), None)
        if like is not None:
            block.to(device=like.device, dtype=like.dtype)
        plans.append((name, module, parent, width, block.train(module.training)))
    # Every block is built before the first replacement, so an error leaves the model as it was.
    # Parents are held by reference, so replacing one selected module never disturbs another.
    for name, module, parent, width, block in plans:
        place = f"module {name!r} ({type(module).__name__})"
        setattr(parent, name.rsplit(".", 1)[-1], WithAttention(module, block, width, place))
    return model


def attached(model: nn.Module) -> list[str]:
    """The names of the attention blocks `attach` inserted, e.g. ['layer1.0.bn2.attention']."""
    return [f"{name}.attention" for name, m in model.named_modules() if isinstance(m, WithAttention)]


def detach(model: nn.Module) -> nn.Module:
    """Remove every block `attach` inserted, putting the original modules back; returns `model`."""
    for name, module, parent in reversed(_candidates(model)):
        if isinstance(module, WithAttention):
            setattr(parent, name.rsplit(".", 1)[-1], module.module)
    return model

