"""Attention blocks (SB, SE and the registry), the per-channel operations under them, and `attach`."""
from .attach import WithAttention, attach, attached, detach, infer_channels
from .attention import (LAMBDA_INITS, AttentionBranch, ShiftBalance, SqueezeExcite, create_attention,
                        get_attention, hidden_channels, is_attention, list_activations, list_attention,
                        register_attention)
from .ops import add_per_channel, spatial_mean

__all__ = ["WithAttention", "attach", "attached", "detach", "infer_channels", "LAMBDA_INITS", "AttentionBranch",
           "ShiftBalance", "SqueezeExcite", "create_attention", "get_attention", "hidden_channels", "is_attention",
           "list_activations", "list_attention", "register_attention", "add_per_channel", "spatial_mean"]
