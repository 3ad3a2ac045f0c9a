"""airbench94's network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498), with
attention blocks from the registry.

The architecture is data: a 2x2 patch-whitening convolution (3 -> 24 channels, no padding) and a GELU, then conv
groups of widths AIRBENCH_WIDTHS, each conv 3x3 - max pool 2x2 - BatchNorm - GELU - conv 3x3 - BatchNorm - GELU;
a 3x3 max pool, a linear head without bias, the logits scaled by 1/9. Attention sits at the end of every group
("stage"), or also after its first conv's GELU ("layer").

Initialisation, as airbench's: the convolutions without bias are identity (dirac) on their first input channels;
BatchNorm's weight is fixed at 1, its bias trained; the whitening weights come from the training images
(`init_whitening`: each eigenvector of the covariance of their 2x2 patches, plus and minus, scaled by
1/sqrt(eigenvalue + 5e-4)) and stay frozen; its bias starts at zero and trains (the airbench preset freezes it
after 3 epochs).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import create_attention
from .registry import new_classifier, register_model
from .stages import StagedFeatures
from .vgg import check_shape_options, scaled

__all__ = ["AirbenchNet", "AIRBENCH_WIDTHS", "AIRBENCH_PLACEMENTS", "airbench", "patch_covariance"]

AIRBENCH_WIDTHS: tuple[int, ...] = (64, 256, 256)
AIRBENCH_PLACEMENTS = ("stage", "layer")
WHITEN_PATCH = 2
WHITEN_EPS = 5e-4
BN_MOMENTUM = 0.4  # PyTorch's convention: the new batch's share of the running statistics (airbench keeps 0.6)
BN_EPS = 1e-12
LOGIT_SCALE = 1 / 9
# airbench normalises by CIFAR-10's channel statistics, sbattn's data come as (x/255 - 0.5)/0.5: the network turns
# the one into the other first, so that the whitening (its eps) and the first layers see airbench's numbers.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    norm.weight.requires_grad_(False)  # fixed at 1: only the bias trains
    return norm


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    if not conv.weight.is_meta:
        with torch.no_grad():
            nn.init.dirac_(conv.weight[:cin])  # identity on the first input channels; the rest as PyTorch draws
    return conv


class AirbenchNet(StagedFeatures):
    """airbench94's network for 32x32 images: `widths` per conv group (times `width`), `attention` of a registered
    kind after each group (placement "stage") or after each conv (placement "layer"), `num_classes` outputs.
    Call init_whitening with training images before training; until then the whitening is PyTorch's random draw."""

    def __init__(self, widths: Sequence[int] = AIRBENCH_WIDTHS, attention: str | None = None,
                 placement: str = "stage", num_classes: int = 10, width: float = 1.0, in_chans: int = 3,
                 **attn_options: Any) -> None:
        super().__init__()
        check_shape_options("airbench", placement, AIRBENCH_PLACEMENTS, width)
        self.attention, self.placement = attention, placement
        channels = 2 * in_chans * WHITEN_PATCH ** 2
        mean, std = torch.tensor(CIFAR_MEAN[:in_chans]), torch.tensor(CIFAR_STD[:in_chans])
        # x in [-1, 1] -> ((x + 1) / 2 - mean) / std; not saved: a constant of the architecture
        self.register_buffer("input_scale", (0.5 / std).view(-1, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((0.5 - mean) / std).view(-1, 1, 1), persistent=False)
        self.whiten = nn.Conv2d(in_chans, channels, WHITEN_PATCH, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from the data (init_whitening), then frozen
        assert self.whiten.bias is not None
        nn.init.zeros_(self.whiten.bias)  # airbench's convolutions start their biases at zero
        groups: list[nn.Module] = []
        for group_width in widths:
            out = scaled(group_width, width)
            layers: list[nn.Module] = [_conv(channels, out), nn.MaxPool2d(2), _batch_norm(out), nn.GELU()]
            for where in ("layer", "stage"):
                attn = create_attention(attention, out, **attn_options) if placement == "layer" or where == "stage" \
                    else None
                layers += [attn] if attn is not None else []
                if where == "layer":
                    layers += [_conv(out, out), _batch_norm(out), nn.GELU()]
            groups.append(nn.Sequential(*layers))
            channels = out
        self.features = nn.Sequential(nn.GELU(), *groups, nn.MaxPool2d(3))
        self.num_features, self.num_classes = channels, num_classes
        self.head: nn.Module = nn.Linear(channels, num_classes, bias=False)

    def init_whitening(self, images: torch.Tensor, eps: float = WHITEN_EPS) -> None:
        """The whitening weights from `images` (N, C, H, W), normalised as training sees them, standardised
        (airbench: 5,000 training images): each eigenvector of their patch covariance, and its negative, over sqrt(eigenvalue +
        eps), the largest eigenvalue first."""
        eigenvalues, eigenvectors = torch.linalg.eigh(patch_covariance(self.standardize(images), WHITEN_PATCH))
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # rows, largest first
        scaled_vectors = eigenvectors / torch.sqrt(eigenvalues + eps)[:, None]
        weight = torch.cat([scaled_vectors, -scaled_vectors]).reshape(self.whiten.weight.shape)
        with torch.no_grad():
            self.whiten.weight.copy_(weight.to(self.whiten.weight))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Images as sbattn normalises them, (x/255 - 0.5)/0.5, as airbench does: by CIFAR-10's mean and std."""
        scale, shift = self.get_buffer("input_scale"), self.get_buffer("input_shift")
        return x * scale + shift

    def _features_in(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[0](self.whiten(self.standardize(x)))

    def _feature_stages(self) -> list[nn.Module]:
        return list(self.features)[1:-1]  # the conv groups

    def _features_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[-1](x).flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._checkpointed_features(x)
        return self.features(self.whiten(self.standardize(x))).flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x) * LOGIT_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """As timm's; with 0 classes the model returns its features scaled by the head's 1/9, as its logits are."""
        self.head = new_classifier(self.head, self.num_features, num_classes)
        self.num_classes = num_classes


def patch_covariance(images: torch.Tensor, size: int) -> torch.Tensor:
    """The (uncentred) covariance of every size x size patch of `images`, each patch a vector in the order of a
    convolution's weights (channel, row, column): mean of x x^T over the patches, in float64."""
    patches = F.unfold(images.double(), size)  # (N, C * size * size, patches per image)
    flat = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return (flat.T @ flat / flat.shape[0]).float()


@register_model
def airbench(attention: str | None = None, activation: str = "tanh", ratio: float = 0.5, num_classes: int = 10,
             width: float = 1.0, placement: str = "stage", **attn_options: Any) -> AirbenchNet:
    """airbench94's network: whitening, three conv groups (64, 256, 256), attention after each group."""
    return AirbenchNet(AIRBENCH_WIDTHS, attention, placement, num_classes, width,
                       activation=activation, ratio=ratio, **attn_options)
