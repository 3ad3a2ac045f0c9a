"""The reference implementation's modified VGG16 for 32x32 images.

The architecture is data: a list of stages, each (width, number of 3x3 conv-BN-ReLU layers), each ending in a
2x2 max pool. Attention sits at the end of every stage, before its pool ("stage", the reference's placement), or
after every conv-BN-ReLU ("layer", the paper's "more layers").
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..nn.attention import create_attention
from .registry import new_classifier, register_model
from .stages import StagedFeatures

__all__ = ["VGG", "VGG16_STAGES", "VGG_PLACEMENTS", "vgg16", "scaled"]

VGG16_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3))
VGG_PLACEMENTS = ("stage", "layer")  # VGG has no residual blocks


def check_shape_options(network: str, placement: str, placements: Sequence[str], width: float) -> None:
    """A network's placement among those it offers, and a positive width multiplier; else one ValueError."""
    if placement not in placements:
        raise ValueError(f"{network} supports placement {' or '.join(placements)}, not {placement!r}")
    if width <= 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")


def scaled(width: int, multiplier: float) -> int:
    """A layer width under a width multiplier, never below 1."""
    return max(1, int(round(width * multiplier)))


class VGG(StagedFeatures):
    """The reference implementation's CIFAR VGG16 as data: `stages` of (channels, convs), each conv 3x3 - BatchNorm -
    ReLU, a 2x2 max pool ending each stage, attention of a registered kind before it ("stage", the reference's) or
    after each conv ("layer"); then global average pooling and a classifier with one `hidden`-wide ReLU layer.
    `width` scales every layer."""

    def __init__(self, stages: Sequence[tuple[int, int]] = VGG16_STAGES, attention: str | None = None,
                 placement: str = "stage", num_classes: int = 10, width: float = 1.0, hidden: int = 256,
                 in_chans: int = 3, **attn_options: Any) -> None:
        super().__init__()
        check_shape_options("VGG", placement, VGG_PLACEMENTS, width)
        self.attention, self.placement = attention, placement
        blocks: list[nn.Module] = []
        channels = in_chans
        for stage_width, depth in stages:
            out = scaled(stage_width, width)
            stage: list[nn.Module] = []
            for i in range(depth):
                stage += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
                if placement == "layer" or i == depth - 1:
                    attn = create_attention(attention, out, **attn_options)
                    stage += [attn] if attn is not None else []
            stage.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*stage))
        self.features = nn.Sequential(*blocks)
        hidden = scaled(hidden, width)
        self.num_features, self.num_classes = hidden, num_classes
        self.classifier = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, num_classes))
        self.apply(_reference_init)

    def _feature_stages(self) -> list[nn.Module]:
        return list(self.features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._checkpointed_features(x)
        return self.features(x).mean((2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[1](self.classifier[0](x))
        return x if pre_logits else self.classifier[2](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier[2]

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[2] = new_classifier(self.classifier[2], self.num_features, num_classes)
        self.num_classes = num_classes


def _reference_init(module: nn.Module) -> None:
    """The reference implementation's initialisation: Linear and BatchNorm1d weights from N(0, 0.02), their biases 0."""
    if isinstance(module, (nn.Linear, nn.BatchNorm1d)) and not module.weight.is_meta:
        # A model on the meta device (a recipe's check) has no values to draw, and normal_ there imports dynamo (1 s).
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)


@register_model
def vgg16(attention: str | None = None, activation: str = "tanh", ratio: float = 0.5, num_classes: int = 10,
          width: float = 1.0, placement: str = "stage", **attn_options: Any) -> VGG:
    """The reference implementation's modified VGG16. attention: None, "sb" or "se"; activation is SB's (SE's gate is a sigmoid)."""
    return VGG(VGG16_STAGES, attention, placement, num_classes, width,
               activation=activation, ratio=ratio, **attn_options)
