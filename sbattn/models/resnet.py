"""Residual networks for 32x32 images with SB or SE attention placed as in SE-ResNet.

The architecture is data: a stem width and a list of stages, each (width, number of basic blocks, stride).
A basic block is conv3x3-BN-ReLU-conv3x3-BN on the residual branch, added to the shortcut, then ReLU.
Attention sits on the residual branch before the addition:

- "block": in every block, after the second BN (SE-ResNet's placement);
- "stage": only in the last block of each stage;
- "layer": after each conv-BN of the branch (after the first BN, before its ReLU; and after the second).

The CIFAR ResNets of He et al. (2016) use parameter-free shortcuts (their option A: subsample, pad channels
with zeros) and have 0.27 M (ResNet-20) and 0.85 M (ResNet-56) parameters; the 4-stage ResNet-18 used on
CIFAR-10 has a 3x3 stem, no max pool and 1x1 conv-BN projection shortcuts: 11,173,962 parameters.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import create_attention
from .registry import PLACEMENTS, new_classifier, register_model
from .stages import StagedFeatures
from .vgg import scaled

__all__ = ["ResNet", "BasicBlock", "PadShortcut", "RESNET_PLACEMENTS", "CIFAR_RESNET20", "CIFAR_RESNET56",
           "CIFAR_RESNET18", "resnet20", "resnet56", "resnet18"]

Stage = tuple[int, int, int]  # (width, blocks, stride of the first block)
CIFAR_RESNET20: tuple[Stage, ...] = ((16, 3, 1), (32, 3, 2), (64, 3, 2))
CIFAR_RESNET56: tuple[Stage, ...] = ((16, 9, 1), (32, 9, 2), (64, 9, 2))
CIFAR_RESNET18: tuple[Stage, ...] = ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))
RESNET_PLACEMENTS = PLACEMENTS  # a residual network offers every placement
SHORTCUTS = ("A", "B")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A shortcut: take every stride-th pixel and zero-pad the channels, without parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"a padding shortcut cannot reduce {in_channels} channels to {out_channels}")
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


class BasicBlock(nn.Module):
    """relu(branch(x) + shortcut(x)); branch = conv1, bn1, [attn1], relu, conv2, bn2, [attn]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A",
                 attention: str | None = None, attn_after_bn1: bool = False, attn_after_bn2: bool = False,
                 **attn_options: Any) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {"conv1": _conv3x3(in_channels, out_channels, stride),
                                        "bn1": nn.BatchNorm2d(out_channels)}
        attn1 = create_attention(attention, out_channels, **attn_options) if attn_after_bn1 else None
        if attn1 is not None:
            layers["attn1"] = attn1
        layers.update(relu=nn.ReLU(inplace=True), conv2=_conv3x3(out_channels, out_channels),
                      bn2=nn.BatchNorm2d(out_channels))
        attn = create_attention(attention, out_channels, **attn_options) if attn_after_bn2 else None
        if attn is not None:
            layers["attn"] = attn
        # A named Sequential: readable names (branch.bn2) and conv-BN pairs that evaluation can fold.
        self.branch = nn.Sequential(OrderedDict(layers))
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class ResNet(StagedFeatures):
    """A ResNet of basic blocks for 32x32 images: 3x3 stem, stages, global average pool, linear classifier.

    Initialisation, as in He et al. and torchvision: convolutions He-normal (fan_out, ReLU), BatchNorm2d weight 1
    and bias 0; the classifier and the attention blocks keep PyTorch's defaults (the SE-ResNet convention, and
    what `sbattn.attach` gives a user's own network), not the VGG's N(0, 0.02) initialisation of the reference implementation.
    """

    def __init__(self, stages: Sequence[Stage] = CIFAR_RESNET20, attention: str | None = None,
                 placement: str = "block", num_classes: int = 10, width: float = 1.0, shortcut: str = "A",
                 stem_width: int | None = None, in_chans: int = 3, **attn_options: Any) -> None:
        super().__init__()
        if placement not in RESNET_PLACEMENTS:
            raise ValueError(f"ResNet supports placement {', '.join(RESNET_PLACEMENTS)}, not {placement!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be 'A' (zero padding) or 'B' (1x1 conv projection), not {shortcut!r}")
        if width <= 0:
            raise ValueError(f"width multiplier must be > 0, got {width}")
        self.attention, self.placement = attention, placement
        channels = scaled(stem_width if stem_width is not None else stages[0][0], width)
        self.stem = nn.Sequential(_conv3x3(in_chans, channels), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        layers = []
        for stage_width, depth, stride in stages:
            out = scaled(stage_width, width)
            blocks = []
            for i in range(depth):
                blocks.append(BasicBlock(channels, out, stride if i == 0 else 1, shortcut, attention,
                                         attn_after_bn1=placement == "layer",
                                         attn_after_bn2=placement != "stage" or i == depth - 1, **attn_options))
                channels = out
            layers.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*layers)
        self.num_features, self.num_classes = channels, num_classes
        self.classifier: nn.Module = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _feature_stages(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._checkpointed_features(x)
        return self.stages(self.stem(x)).mean((2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = new_classifier(self.classifier, self.num_features, num_classes)
        self.num_classes = num_classes


def _build(stages: Sequence[Stage], shortcut: str, attention: str | None, activation: str, ratio: float,
           num_classes: int, width: float, placement: str, attn_options: dict[str, Any]) -> ResNet:
    return ResNet(stages, attention, placement, num_classes, width, shortcut,
                  activation=activation, ratio=ratio, **attn_options)


@register_model
def resnet20(attention: str | None = None, activation: str = "tanh", ratio: float = 0.5, num_classes: int = 10,
             width: float = 1.0, placement: str = "block", **attn_options: Any) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2016; 0.27 M parameters). attention: None, "sb" or "se"."""
    return _build(CIFAR_RESNET20, "A", attention, activation, ratio, num_classes, width, placement, attn_options)


@register_model
def resnet56(attention: str | None = None, activation: str = "tanh", ratio: float = 0.5, num_classes: int = 10,
             width: float = 1.0, placement: str = "block", **attn_options: Any) -> ResNet:
    """CIFAR ResNet-56 (He et al. 2016; 0.85 M parameters). attention: None, "sb" or "se"."""
    return _build(CIFAR_RESNET56, "A", attention, activation, ratio, num_classes, width, placement, attn_options)


@register_model
def resnet18(attention: str | None = None, activation: str = "tanh", ratio: float = 0.5, num_classes: int = 10,
             width: float = 1.0, placement: str = "block", **attn_options: Any) -> ResNet:
    """The 4-stage ResNet-18 for CIFAR-10 (3x3 stem, no max pool; 11.2 M parameters). attention: None, "sb" or "se"."""
    return _build(CIFAR_RESNET18, "B", attention, activation, ratio, num_classes, width, placement, attn_options)
