"""The models: the reference implementation's VGG16, CIFAR ResNets, airbench94's network, the registry, and a
layer/FLOP summary."""
from .airbench import AirbenchNet, airbench
from .registry import PLACEMENTS, create_model, default_placement, list_models, register_model
from .resnet import ResNet, resnet18, resnet20, resnet56
from .summary import Summary, format_summary, summarize
from .timm_models import create_timm_model, register_when_timm_is_imported
from .vgg import VGG, vgg16

__all__ = ["AirbenchNet", "airbench", "PLACEMENTS", "create_model", "default_placement", "list_models", "register_model", "ResNet", "resnet18",
           "resnet20", "resnet56", "Summary", "format_summary", "summarize", "create_timm_model",
           "register_when_timm_is_imported", "VGG", "vgg16"]
