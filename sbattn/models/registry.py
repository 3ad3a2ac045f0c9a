"""The model registry: builders by name, and the attention placements they may offer."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

__all__ = ["PLACEMENTS", "register_model", "create_model", "list_models", "default_placement"]

# Where a model puts its attention blocks: at the end of each stage, after each residual block, or after each
# conv layer. A builder offers some of them (VGG has no residual blocks) and names its own default.
PLACEMENTS = ("stage", "block", "layer")

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make a model builder available to create_model and the CLI under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """The registered architectures, sorted by name."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. create_model("vgg16", attention="sb")."""
    try:
        builder = _MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(list_models())}") from None
    return builder(**kwargs)


def default_placement(name: str) -> str:
    """The placement a registered architecture's builder uses when given none."""
    return inspect.signature(_MODELS[name]).parameters["placement"].default
