"""torch.hub entry points: torch.hub.load("<repo or its folder>", "resnet20", attention="sb").

Each entry takes its builder's options by name (torch.hub.help(repo, "vgg16") lists them with their defaults):
with none, it is the network without attention. No pretrained weights are published: the models start untrained.
sbattn is imported when an entry is called, so that torch.hub checks `dependencies` first and names a missing one.
"""
from __future__ import annotations

import inspect

# Every third-party module that building a model imports (tests/test_hubconf.py checks it); PIL is Pillow's.
dependencies = ["torch", "numpy", "tqdm", "PIL"]

_OPTIONS = {
    "attention": 'None or "none" (no attention), "sb", "se", or any kind of sbattn.list_attention()',
    "activation": "SB's gate, one of sbattn.list_activations() (SE's gate is a sigmoid)",
    "ratio": "the attention branch's hidden width, as a fraction of the block's channels",
    "num_classes": "outputs of the classifier",
    "width": "multiplier of every layer's width",
    "placement": 'where the blocks go: "stage" (end of each stage), "block" (each residual block, not in VGG), "layer" '
                 "(after each conv-BN)",
    "lambda_init": 'SB\'s lambda at the start: "normal", "zeros", "ones" or a number',
    "pretrained": "must be False: sbattn publishes no weights",
}


def _documented(entry):
    """Append each option and its true default, read from the entry's signature, to the entry's docstring."""
    params = [p for p in inspect.signature(entry).parameters.values() if p.default is not p.empty]
    lines = [f"    {p.name}={p.default!r}: {_OPTIONS[p.name]}" for p in params]
    entry.__doc__ += ("\n\nOptions (default shown):\n" + "\n".join(lines) + "\n"
                      "    any other keyword goes to every attention block (e.g. branch_norm, see ShiftBalance)")
    return entry


def _build(name: str, pretrained: bool, block_options: dict, **options):
    """sbattn.models.<name>(**options, **block_options)."""
    if pretrained:
        raise ValueError(f"sbattn publishes no pretrained weights for {name}; call with pretrained=False and train "
                         f"it (sbattn train --arch {name}), or load your own with sbattn.load(path)")
    from sbattn import models
    return getattr(models, name)(**options, **block_options)


def _entry(name: str, doc: str, default_placement: str):
    """The hub entry `name`: its builder's options as named parameters, so that torch.hub.help lists them."""
    def entry(pretrained: bool = False, attention: str | None = None, activation: str = "tanh", ratio: float = 0.5,
              num_classes: int = 10, width: float = 1.0, placement: str = default_placement,
              lambda_init: str | float = "normal", **block_options):
        return _build(name, pretrained, block_options, attention=attention, activation=activation, ratio=ratio,
                      num_classes=num_classes, width=width, placement=placement, lambda_init=lambda_init)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = doc
    return _documented(entry)


vgg16 = _entry("vgg16", "The reference implementation's modified VGG16 for 32x32 images, untrained.", "stage")
resnet20 = _entry("resnet20", "CIFAR ResNet-20 (He et al. 2016), untrained.", "block")
resnet56 = _entry("resnet56", "CIFAR ResNet-56 (He et al. 2016), untrained.", "block")
resnet18 = _entry("resnet18", "The 4-stage CIFAR ResNet-18 (3x3 stem, no max pool), untrained.", "block")
