"""Training and its products: the configuration, the run state and training loop, evaluation, checkpoints and
weights, precision, torchrun support, and export."""
from .checkpoint import load
from .config import TrainConfig
from .loop import RunResult, train

__all__ = ["load", "TrainConfig", "RunResult", "train"]
