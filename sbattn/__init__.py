"""sbattn: Shift-and-Balance attention for PyTorch."""
from .config import Recipe, TrainConfig
from .errors import CheckpointError, ConfigError, DataError, SbattnError, UserError
from .models import ResNet, VGG, create_model, list_models, register_model, resnet18, resnet20, resnet56, vgg16
from .nn import (ShiftBalance, SqueezeExcite, WithAttention, attach, attached, create_attention, detach,
                 list_activations, list_attention, load_pretrained, register_attention, replace_attention)
from .records import load
from .version import __version__
from .models import register_when_timm_is_imported

register_when_timm_is_imported()  # sbattn's models and "sb" in timm (models/timm_models.py); timm not imported

__all__ = [
    "ShiftBalance", "SqueezeExcite", "create_attention", "register_attention", "list_attention", "list_activations",
    "WithAttention", "attach", "attached", "detach", "replace_attention", "load_pretrained", "load", "Recipe", "TrainConfig", "SbattnError", "ConfigError",
    "DataError", "CheckpointError", "UserError", "VGG", "create_model", "list_models", "register_model", "vgg16",
    "ResNet", "resnet18", "resnet20", "resnet56", "__version__",
]
