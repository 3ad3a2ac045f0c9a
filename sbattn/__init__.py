"""sbattn: Shift-and-Balance attention for PyTorch."""
from .attention import (ACTIVATIONS, ATTENTION, ShiftBalance, SqueezeExcite, create_attention,
                        register_attention)
from .checkpoint import load
from .config import ConfigError, TrainConfig
from .models import MODELS, VGG, create_model, register_model, vgg16

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "ATTENTION", "ShiftBalance", "SqueezeExcite", "create_attention", "register_attention",
    "load", "ConfigError", "TrainConfig", "MODELS", "VGG", "create_model", "register_model", "vgg16", "__version__",
]
