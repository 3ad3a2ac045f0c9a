"""timm's feature interface for sbattn's networks, over their stages: gradient checkpointing and intermediates.

A network gives three pieces (its forward_features is their composition): `_features_in(x)`, what comes before
the first stage (airbench's standardisation and whitening); `_feature_stages()`, the stages in order, each a
module of one tensor (timm's feature_info lists them); `_features_out(x)`, what follows (the global pool).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["StagedFeatures", "take_indices"]


def take_indices(count: int, indices: Optional[Union[int, Sequence[int]]]) -> list[int]:
    """timm's choice of intermediates among `count` stages: None all, n the last n, a list those (negative from
    the end); an index out of range is one ValueError."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices}: this network has {count} stages; ask for 1 to {count}")
        return list(range(count - indices, count))
    taken = sorted({i % count if -count <= i < count else i for i in indices})
    if any(not 0 <= i < count for i in taken):
        raise ValueError(f"indices={list(indices)}: this network's stages are 0 to {count - 1} (or -{count} to -1)")
    return taken


class StagedFeatures(nn.Module):
    """set_grad_checkpointing and forward_intermediates, as timm's models have them."""

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False  # an attribute of the instance: TorchScript reads the forward's branch on it

    def _features_in(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _feature_stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def _features_out(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of keeping them (memory for time).
        A stage's BatchNorm then counts its training batch twice in its running statistics, as in timm."""
        self.grad_checkpointing = enable

    def _stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    @torch.jit.unused
    def _checkpointed_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._features_in(x)
        for stage in self._feature_stages():
            x = self._stage(stage, x)
        return self._features_out(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """timm's: the output of the stages `indices` names (NCHW), and the features forward_head takes (those of
        forward_features, pooled as it pools them). norm asks nothing of these networks (no final norm);
        stop_early stops after the last stage asked for, and the features returned are that stage's, pooled."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: these networks' feature maps are NCHW")
        stages = self._feature_stages()
        taken = take_indices(len(stages), indices)
        x, intermediates = self._features_in(x), []
        for i, stage in enumerate(stages[:taken[-1] + 1] if stop_early else stages):
            x = self._stage(stage, x)
            if i in taken:
                intermediates.append(x)
        return intermediates if intermediates_only else (self._features_out(x), intermediates)
