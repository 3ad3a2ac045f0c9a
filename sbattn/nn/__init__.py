"""Attention blocks (SB, SE, the registry, and timm's ECA, CBAM and global context as kinds of it), the per-channel
operations under them, and `attach`."""
from .attach import WithAttention, attach, attached, detach, infer_channels
from .attention import (LAMBDA_INITS, AttentionBranch, ShiftBalance, SqueezeExcite, create_attention,
                        get_attention, hidden_channels, is_attention, list_activations, list_attention,
                        register_attention)
from .ops import add_per_channel, spatial_mean
from .zoo import ZOO, TimmBlock

__all__ = ["WithAttention", "attach", "attached", "detach", "infer_channels", "LAMBDA_INITS", "AttentionBranch",
           "ShiftBalance", "SqueezeExcite", "create_attention", "get_attention", "hidden_channels", "is_attention",
           "list_activations", "list_attention", "register_attention", "add_per_channel", "spatial_mean", "ZOO",
           "TimmBlock"]
