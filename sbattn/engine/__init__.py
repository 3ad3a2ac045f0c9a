"""Deprecated: the names of 0.1's `sbattn.engine`, kept for one version. They live in `sbattn.config`,
`sbattn.records` and `sbattn.train` (see CHANGELOG.md)."""
from ..config import TrainConfig
from ..records import load
from ..train import RunResult, train

__all__ = ["load", "TrainConfig", "RunResult", "train"]
