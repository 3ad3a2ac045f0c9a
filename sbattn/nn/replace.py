"""SB where a network has SE: find its squeeze-and-excitation modules and put another attention block in each place.

    model = timm.create_model("regnety_002")
    replaced = sbattn.replace_attention(model, "sb")        # {'s1.b1.se': SEModule(...), ...}: what was taken out

Each SE-like module (timm's SEModule, EffectiveSEModule and EfficientNet/MobileNetV3/GhostNet SqueezeExcite,
torchvision's SqueezeExcitation, sbattn's own blocks) is read for its channels, hidden width, hidden activation,
gate and branch norm, and the new block keeps them unless an option says otherwise. SB in place of an SE is the
block every timm door builds (TIMM_STYLE_SB): the SE's widths and branch norm (timm's: 1/16-style, none), tanh
for SB's act (SB shifts; the SE's gate scaled), lambda at zero (each block starts as the identity). EffectiveSE has no
hidden layer: the new block's hidden width is half the channels, which gives its two layers the parameters of
ESE's one. Known by class (module path and name), so neither timm nor torchvision is imported here.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from .attach import Where, _candidates, _selector
from .attention import ShiftBalance, create_attention, get_attention, is_attention, passed_options
from .branch import AttentionBranch, list_activations

__all__ = ["replace_attention", "se_options", "SE_MODULES", "ECA_MODULES", "NOT_REPLACED", "TIMM_STYLE_SB",
           "carried_weights", "load_pretrained", "PretrainedLoad"]

# The SE-like classes, by (module, class name), and the attributes that hold (reduce, hidden act, expand, gate).
SE_MODULES: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("timm.layers.squeeze_excite", "SEModule"): ("fc1", "act", "fc2", "gate"),
    ("timm.layers.squeeze_excite", "EffectiveSEModule"): ("", "", "fc", "gate"),
    ("timm.models._efficientnet_blocks", "SqueezeExcite"): ("conv_reduce", "act1", "conv_expand", "gate"),
    ("torchvision.ops.misc", "SqueezeExcitation"): ("fc1", "activation", "fc2", "scale_activation"),
}
# ECA (Wang et al.): a 1-D convolution across the squeezed channels, and no channel count held. In its place a
# block of the timm widths (SE's 1/16, a multiple of 8), its channels read from a forward pass on the meta device.
ECA_MODULES = {("timm.layers.eca", "EcaModule"), ("timm.layers.eca", "CecaModule")}
_ECA_WIDTHS: dict[str, Any] = {"rd_ratio": 1 / 16, "rd_divisor": 8, "branch_norm": "none"}
# Attention kinds a user may expect replaced and which are not, each with the reason, for the refusal's one line.
NOT_REPLACED = {
    "GlobalContext": "attention-pooled context, not a channel squeeze",
    "SelectiveKernel": "a choice between convolutions, not a block after one",
    "CbamModule": "channel and spatial attention in one",
    "LightCbamModule": "channel and spatial attention in one",
    "GatherExcite": "a spatial gather, not a global squeeze",
    "EseModule": "hgnet's, inside its aggregation: not an SE layer timm builds by name",
}
# Gates SB and SE know by name (their classes as timm and torch build them).
_GATE_NAMES = {"Sigmoid": "sigmoid", "Hardsigmoid": "hard_sigmoid", "HardSigmoid": "hard_sigmoid",
               "HardSigmoidMe": "hard_sigmoid", "Tanh": "tanh", "Identity": "linear"}
_WIDTH_OPTIONS = ("ratio", "rd_ratio", "rd_channels", "rd_divisor", "rd_round_fn")
_GATE_OPTIONS = ("activation", "gate_layer")
# SB in a network built the timm way, whichever door (the "sb" string, the sbresnet models, replace_attention):
# lambda at zero, so that each block starts as the identity (timm zero-initialises a residual branch's last
# BatchNorm so that each block starts as one: SE passes that zero on, SB with lambda ~ N(0, 1) added up to 1.5 at
# init); SB's act a signed shift, tanh, not the replaced SE's gate (a multiplier in (0, 1)). Options win.
TIMM_STYLE_SB: dict[str, Any] = {"lambda_init": "zeros", "activation": "tanh"}
# Where a network scales its attention's output (timm's NF-nets: attn_gain * attn(x), 2.0 to undo the SE gate's
# mean of about 0.5, so that the signal keeps its scale): SB passes x through unscaled, and the gain becomes 1.
_GAINED = ("attn", "attn_last")


def _known_layout(module: nn.Module) -> Optional[tuple[str, str, str, str]]:
    for cls in type(module).__mro__:
        layout = SE_MODULES.get((cls.__module__, cls.__name__))
        if layout is not None:
            return layout
    return None


def _gate(gate: Any, name: Optional[str] = None) -> Any:
    """A module's gate as the new block's gate_layer: its name where the blocks know it (`name`, what sbattn's own
    blocks recorded, first), else a copy of it, its settings kept (Softmax's dim, a LeakyReLU's slope, a function)."""
    if name in list_activations():
        return name
    return _GATE_NAMES.get(type(gate).__name__) or copy.deepcopy(gate)


def se_options(module: nn.Module) -> Optional[dict[str, Any]]:
    """The channels and branch of an SE-like module as a block's options (channels, rd_channels, act_layer,
    gate_layer, branch_norm), or None when `module` is none of SE_MODULES nor sbattn's blocks."""
    branch = getattr(module, "branch", None)
    if is_attention(module) and isinstance(branch, AttentionBranch):  # sbattn's SB or SE
        sb = hasattr(module, "act")  # SB's gate is its act and activation, SE's its gate and gate_name
        gate, name = getattr(module, "act" if sb else "gate"), getattr(module, "activation" if sb else "gate_name")
        return dict(channels=branch[0].in_features, rd_channels=branch[0].out_features, act_layer=type(branch[2]),
                    gate_layer=_gate(gate, name), branch_norm=branch.branch_norm)
    layout = _known_layout(module)
    if layout is None:
        return None
    # Layers of timm's and torchvision's classes (Any: neither is imported here); an empty name is a layer it has not.
    parts: list[Any] = [getattr(module, name, None) if name else None for name in layout]
    reduce, act, expand, gate = parts
    if getattr(module, "add_maxpool", False):
        raise ValueError(f"{type(module).__name__} with add_maxpool=True squeezes by mean and max, and the blocks "
                         f"squeeze by the mean alone")
    channels = expand.out_channels
    norm = getattr(module, "bn", None)
    return dict(channels=channels, rd_channels=reduce.out_channels if reduce is not None else max(1, channels // 2),
                act_layer=type(act) if act is not None else None, gate_layer=_gate(gate),
                branch_norm="hidden_bn" if isinstance(norm, nn.modules.batchnorm._BatchNorm) else "none")


def _is_eca(module: nn.Module) -> bool:
    return (type(module).__module__, type(module).__name__) in ECA_MODULES


def _input_channels(model: nn.Module, names: list[str]) -> dict[str, int]:
    """The channel count of the input of each module `names` names, from one forward pass on the meta device
    (the model's own parameters untouched: meta stand-ins, shapes without arithmetic) at the model's input size."""
    size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224)))
    seen: dict[str, int] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(name, args[0].shape[1])
        return hook
    hooks = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in names]
    meta = {k: torch.empty_like(v, device="meta") for k, v in
            [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    try:
        torch.func.functional_call(model, meta, (torch.empty(1, *size, device="meta"),))
    except Exception as e:  # noqa: BLE001 - any failure of the probe is one line
        raise ValueError(f"could not read the channels of ECA module {names[0]!r} from a forward pass on the meta "
                         f"device at input size {size} ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    finally:
        for hook in hooks:
            hook.remove()
    return seen


# An SE layer's weights by their place in SB's and SE's branch (Linear, norm, activation, Linear, norm): timm's
# 1x1 convolutions (SEModule's fc1/fc2, EfficientNet's conv_reduce/conv_expand), ReXNet's BatchNorm after the
# hidden layer, torchvision's fc1/fc2; sbattn's own blocks' keys are the branch's already.
_BRANCH_PLACES = {"fc1": "branch.0", "conv_reduce": "branch.0", "bn": "branch.1", "fc2": "branch.3",
                  "conv_expand": "branch.3"}


def _branch_key(key: str) -> str:
    """An SE layer's state-dict key as the key of the same weight in a block's branch."""
    layer, _, leaf = key.rpartition(".")
    return f"{_BRANCH_PLACES.get(layer, layer)}.{leaf}" if layer else key


def carried_weights(se_state: dict[str, Any], block_state: dict[str, Any]) -> dict[str, Any]:
    """The weights of an SE layer (its state dict) that have a place of the same size in a new block's branch,
    under the block's keys and in its shapes (a 1x1 convolution's (h, C, 1, 1) as a Linear's (h, C))."""
    carried = {}
    for key, value in se_state.items():
        target = _branch_key(key)
        here = block_state.get(target)
        if here is not None and getattr(value, "numel", lambda: -1)() == here.numel():
            carried[target] = value.reshape(here.shape)
    return carried


def _accepted(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The kept options the block of `kind` takes (timm's ECA takes none of them, say)."""
    builder = get_attention(kind)
    block_class = getattr(builder, "block_class", None)
    target = block_class() if block_class is not None else builder
    parameters = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return options
    return {k: v for k, v in options.items() if k in parameters}


def replace_attention(model: nn.Module, kind: str = "sb", where: Optional[Where] = None, keep_weights: bool = True,
                      **options: Any) -> dict[str, nn.Module]:
    """Replace each SE-like module of `model` (those `where` selects, when given) by a block of `kind` ("sb", "se"
    or any registered kind) of the same channels, keeping its hidden width, hidden activation, gate and branch
    norm unless `options` say otherwise (ratio/rd_ratio/rd_channels for the width, activation/gate_layer for the
    gate, act_layer, branch_norm). The new blocks get the old ones' device, dtype and train/eval mode.

    keep_weights: the SE's trained weights go into the new block's branch where their sizes match (a pretrained
    SE network's squeeze and excitation carried into SB, whose lambda still starts at zero).

    SB in place of an SE is the block of every timm door (TIMM_STYLE_SB: tanh, lambda at zero); where the network
    multiplies that SE's output by a gain (timm's NF-nets' `attn_gain`, 2.0 for the SE gate's 0.5), the gain
    becomes 1, as SB keeps the signal's scale.

    Returns {name: the module taken out}; the model is changed in place, and only when every block was built.
    """
    if kind is None or kind == "none":
        raise ValueError("replace_attention needs an attention kind: the SE modules would have nothing in their place")
    select = _selector(where, model) if where is not None else (lambda name, module: True)
    plans = []
    builder = get_attention(kind)
    sb = isinstance(builder, type) and issubclass(builder, ShiftBalance)  # the timm block's defaults: TIMM_STYLE_SB
    candidates = [(n, m, p) for n, m, p in _candidates(model) if select(n, m)]
    eca = [n for n, m, _ in candidates if _is_eca(m)]
    eca_channels = _input_channels(model, eca) if eca else {}
    for name, module, parent in candidates:
        found = {"channels": eca_channels[name], **_ECA_WIDTHS} if name in eca_channels else se_options(module)
        if found is None:
            continue
        channels = found.pop("channels")
        given = passed_options(kind, options)  # not a model-wide activation that this kind ignores
        if any(k in given for k in _WIDTH_OPTIONS):
            for width in _WIDTH_OPTIONS[1:]:
                found.pop(width, None)
        if sb or any(k in given for k in _GATE_OPTIONS):
            found.pop("gate_layer", None)
        if sb:
            found.update(TIMM_STYLE_SB)
        try:
            block = create_attention(kind, channels, **{**_accepted(kind, found), **options})
        except ValueError as e:
            raise ValueError(f"module {name!r} ({type(module).__name__}, {channels} channels): {e}") from None
        assert block is not None  # kind is a block: "none" was answered above
        like = next(module.parameters(), None)
        if like is not None:
            block.to(device=like.device, dtype=like.dtype)
        if keep_weights:
            block.load_state_dict(carried_weights(module.state_dict(), block.state_dict()), strict=False)
        plans.append((name, module, parent, block.train(module.training)))
    if not plans:
        others = sorted({type(m).__name__ for _, m, _ in candidates if type(m).__name__ in NOT_REPLACED})
        if others:
            raise ValueError(f"this {type(model).__name__}'s attention is {', '.join(others)}, which "
                             f"replace_attention does not replace ({'; '.join(NOT_REPLACED[o] for o in others)}); "
                             f"sbattn.attach adds blocks after the modules you choose")
        known = ", ".join(sorted({n for _, n in [*SE_MODULES, *ECA_MODULES]} | {"ShiftBalance", "SqueezeExcite"}))
        raise ValueError(f"found no SE-like module to replace in this {type(model).__name__} (known: {known}); "
                         f"sbattn.attach adds blocks after the modules you choose")
    for name, module, parent, block in plans:
        leaf = name.rsplit(".", 1)[-1]
        setattr(parent, leaf, block)
        if isinstance(block, ShiftBalance) and leaf in _GAINED and isinstance(getattr(parent, "attn_gain", None),
                                                                              float):
            setattr(parent, "attn_gain", 1.0)
    return {name: module for name, module, _, _ in plans}


class PretrainedLoad(NamedTuple):
    """What load_pretrained did besides loading: the new blocks' keys it left as built, and the keys of the modules
    replace_attention took out, which have no place now."""

    new: list[str]
    dropped: list[str]


def load_pretrained(model: nn.Module, state_dict: dict[str, Any]) -> PretrainedLoad:
    """Load a state dict saved before attach or replace_attention into the changed model: every other key must
    match, as with strict=True; the new blocks keep their initial weights. A ValueError names any other key
    missing or unexpected."""
    blocks = [name for name, module in model.named_modules() if name and is_attention(module)]

    def in_block(key: str) -> bool:
        return any(key.startswith(f"{b}.") for b in blocks)
    # A block's own keys load as any other; a replaced SE's load into the new block's branch where their sizes
    # match (carried_weights); the others under a block (SE of another width, ECA's) are the replaced module's.
    own = model.state_dict()
    loads: dict[str, Any] = {}
    carried_from: set[str] = set()
    for block in blocks:
        mine = {k[len(block) + 1:]: v for k, v in state_dict.items() if k.startswith(f"{block}.")}
        theirs = {k[len(block) + 1:]: v for k, v in own.items() if k.startswith(f"{block}.")}
        carried = carried_weights(mine, theirs)
        loads.update({f"{block}.{k}": v for k, v in carried.items()})
        carried_from.update(f"{block}.{k}" for k in mine if _branch_key(k) in carried)
    dropped = [k for k in state_dict if in_block(k) and k not in carried_from]
    loads.update({k: v for k, v in state_dict.items() if not in_block(k)})
    taken = set(loads)
    missing, unexpected = model.load_state_dict(loads, strict=False)
    stray = [k for k in missing if not in_block(k)]
    if stray or unexpected:
        what = "missing " + ", ".join(stray[:3]) if stray else "unexpected " + ", ".join(unexpected[:3])
        more = len(stray or unexpected) - 3
        raise ValueError(f"the state dict is not this model's without its attention blocks: {what}"
                         f"{f' and {more} more' if more > 0 else ''}")
    # Not load_state_dict's missing keys: a BatchNorm fills in a missing num_batches_tracked without a word.
    return PretrainedLoad(new=[k for k in own if in_block(k) and k not in taken], dropped=dropped)
