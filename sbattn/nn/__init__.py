"""Attention blocks (SB, SE, the registry, and timm's ECA, CBAM, global context and SE as kinds of it), the
per-channel operations under them, `attach`, and `replace_attention` (SB where a network has SE)."""
from .attach import WithAttention, attach, attached, detach, infer_channels
from .attention import (LAMBDA_INITS, AttentionBranch, ShiftBalance, SqueezeExcite, create_attention,
                        get_attention, is_attention, list_activations, list_attention,
                        register_attention)
from .branch import BRANCH_NORMS
from .ops import add_per_channel, spatial_mean
from .replace import SE_MODULES, PretrainedLoad, load_pretrained, replace_attention, se_options
from .zoo import ZOO, TimmBlock

__all__ = ["WithAttention", "attach", "attached", "detach", "infer_channels", "replace_attention", "se_options",
           "SE_MODULES", "load_pretrained", "PretrainedLoad", "LAMBDA_INITS", "BRANCH_NORMS", "AttentionBranch",
           "ShiftBalance", "SqueezeExcite", "create_attention", "get_attention", "is_attention",
           "list_activations", "list_attention", "register_attention", "add_per_channel", "spatial_mean", "ZOO",
           "TimmBlock"]
