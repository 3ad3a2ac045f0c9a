"""sbattn: Shift-and-Balance attention for PyTorch."""
from .attention import (ACTIVATIONS, ATTENTION, ShiftBalance, SqueezeExcite, create_attention,
                        register_attention)
from .attach import WithAttention, attach, attached, detach
from .checkpoint import load
from .config import ConfigError, TrainConfig
from .models import MODELS, VGG, create_model, register_model, vgg16
from .resnet import ResNet, resnet18, resnet20, resnet56  # importing registers the ResNet builders

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "ATTENTION", "ShiftBalance", "SqueezeExcite", "create_attention", "register_attention",
    "WithAttention", "attach", "attached", "detach", "load", "ConfigError", "TrainConfig", "MODELS", "VGG",
    "create_model", "register_model", "vgg16", "ResNet", "resnet18", "resnet20", "resnet56", "__version__",
]
