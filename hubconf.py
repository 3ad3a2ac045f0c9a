"""torch.hub entry points: torch.hub.load("<repo or its folder>", "resnet20", attention="sb").

Every entry point takes the builder's options: attention (None, "sb", "se", or any registered kind), activation, ratio, num_classes,
width, placement, lambda_init. No pretrained weights are published: the models start untrained.
"""
from sbattn.models import resnet18 as _resnet18
from sbattn.models import resnet20 as _resnet20
from sbattn.models import resnet56 as _resnet56
from sbattn.models import vgg16 as _vgg16

dependencies = ["torch"]


def _untrained(pretrained: bool, name: str) -> None:
    if pretrained:
        raise ValueError(f"sbattn publishes no pretrained weights for {name}; call with pretrained=False and train "
                         f"it (sbattn train --arch {name}), or load your own with sbattn.load(path)")


def vgg16(pretrained: bool = False, **kwargs):
    """The reference implementation's modified VGG16 for 32x32 images (untrained: no pretrained weights)."""
    _untrained(pretrained, "vgg16")
    return _vgg16(**kwargs)


def resnet20(pretrained: bool = False, **kwargs):
    """CIFAR ResNet-20, attention per block by default (untrained: no pretrained weights)."""
    _untrained(pretrained, "resnet20")
    return _resnet20(**kwargs)


def resnet56(pretrained: bool = False, **kwargs):
    """CIFAR ResNet-56, attention per block by default (untrained: no pretrained weights)."""
    _untrained(pretrained, "resnet56")
    return _resnet56(**kwargs)


def resnet18(pretrained: bool = False, **kwargs):
    """The 4-stage CIFAR ResNet-18, attention per block by default (untrained: no pretrained weights)."""
    _untrained(pretrained, "resnet18")
    return _resnet18(**kwargs)
