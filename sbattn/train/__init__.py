"""Training one run: the loop and its epochs, the step of each --compile mode, the run's state and optimiser,
evaluation, precision and layout, torchrun, the host's threads and signals."""
from .loop import train
from .state import RunResult

__all__ = ["train", "RunResult"]
