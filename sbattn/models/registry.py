"""The model registry: builders by name, and the attention placements they may offer."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

__all__ = ["PLACEMENTS", "register_model", "register_prefix", "create_model", "list_models", "default_placement",
           "new_classifier"]

# Where a model puts its attention blocks: at the end of each stage, after each residual block, or after each
# conv layer. A builder offers some of them (VGG has no residual blocks) and names its own default.
PLACEMENTS = ("stage", "block", "layer")

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}  # "timm:" -> the builder of every name it begins (timm_models.py)


def register_prefix(prefix: str, builder: Callable[..., nn.Module]) -> None:
    """Make create_model build every name that begins with `prefix` with builder(name, **kwargs)."""
    _PREFIXES[prefix] = builder


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make a model builder available to create_model and the CLI under its function name. The builder
    takes `placement` (where the attention blocks go; its default is the architecture's), else it is refused here."""
    try:
        placement = inspect.signature(fn).parameters.get("placement")
    except (TypeError, ValueError):  # not callable, or no signature to read
        raise ValueError(f"register_model: {fn!r} is not a model builder") from None
    if placement is None or placement.default is inspect.Parameter.empty:
        raise ValueError(f"register_model: {getattr(fn, '__name__', fn)} must take `placement` with a default (one of "
                         f"{', '.join(PLACEMENTS)}), the placement its blocks use when given none")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """The registered architectures, sorted by name."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name, e.g. create_model("vgg16", attention="sb"); "timm:<name>" builds timm's
    model <name> with the attention asked for (models/timm_models.py)."""
    for prefix, builder in _PREFIXES.items():
        if isinstance(name, str) and name.startswith(prefix):
            return builder(name, **kwargs)
    try:
        builder = _MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(list_models())}") from None
    return builder(**kwargs)


def default_placement(name: str) -> str:
    """The placement a registered architecture's builder uses when given none (a timm model's: its blocks')."""
    if any(name.startswith(prefix) for prefix in _PREFIXES):
        return "block"
    return inspect.signature(_MODELS[name]).parameters["placement"].default


def new_classifier(old: nn.Module, num_features: int, num_classes: int) -> nn.Module:
    """A model's last layer for reset_classifier (timm's model interface): a fresh Linear from its `num_features`
    to `num_classes`, with a bias if the old one had one, on the old one's device; 0 classes: Identity (the model
    then returns its pre-logits features)."""
    if num_classes <= 0:
        return nn.Identity()
    like = next(old.parameters(), None)
    layer = nn.Linear(num_features, num_classes, bias=getattr(old, "bias", None) is not None)
    return layer if like is None else layer.to(device=like.device, dtype=like.dtype)

