"""Where a run's files are: every file of a run is named here, from its output folder and its name."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.train_config import TrainConfig

__all__ = ["RunPaths", "RUN_FILES", "RESULTS", "REPLACED"]

# What a run leaves under its name (the exports made from its weights included), its checkpoint first.
RUN_FILES = (".ckpt", ".pth", ".json", ".csv", ".png", ".onnx", ".pt2", ".config.json")
RESULTS = "results.txt"  # the reference implementation's one line per finished run
REPLACED = "replaced"  # the folder in the output directory that the files of replaced runs are moved to


@dataclass(frozen=True)
class RunPaths:
    """Every file of the run `name` in `output_dir`: checkpoint, weights, JSON, CSV, figure, options, lock, log."""

    output_dir: Path
    name: str

    @classmethod
    def of(cls, config: TrainConfig) -> RunPaths:
        """The paths of `config`'s run (a TrainConfig: its output_dir and run_name)."""
        return cls(Path(config.output_dir), config.run_name)

    def with_suffix(self, suffix: str) -> Path:
        return self.output_dir / f"{self.name}{suffix}"

    @property
    def checkpoint(self) -> Path:
        return self.with_suffix(".ckpt")

    @property
    def summary(self) -> Path:
        """The finished run's record: its summary and history (JSON)."""
        return self.with_suffix(".json")

    @property
    def weights(self) -> Path:
        return self.with_suffix(".pth")

    @property
    def history_csv(self) -> Path:
        return self.with_suffix(".csv")

    @property
    def figure(self) -> Path:
        return self.with_suffix(".png")

    @property
    def config(self) -> Path:
        """The run's options, written when it starts: `sbattn train --config` on it trains or resumes the run."""
        return self.with_suffix(".config.json")

    @property
    def lock(self) -> Path:
        return self.with_suffix(".lock")

    @property
    def log(self) -> Path:
        """The output of a run that a suite started in a process of its own."""
        return self.with_suffix(".log")

    @property
    def tensorboard(self) -> Path:
        return self.output_dir / "tensorboard" / self.name

    @property
    def results(self) -> Path:
        return self.output_dir / RESULTS

    @property
    def replaced(self) -> Path:
        return self.output_dir / REPLACED
