"""What a run leaves on disk: its paths, checkpoints and weights (checked before they are believed), finished
runs, the run folder's lock and moves, provenance, the per-run figure and TensorBoard events."""
from .checkpoint import load
from .finished import FinishedRun, finished_run, read_finished
from .paths import RunPaths

__all__ = ["load", "RunPaths", "FinishedRun", "finished_run", "read_finished"]
