"""Where a run's files are: every file of a run is named here, from its output folder and its name."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import recipe_differences

if TYPE_CHECKING:
    from ..config.train_config import TrainConfig

__all__ = ["RunPaths", "RUN_FILES", "RESULTS", "REPLACED"]

# What a run leaves under its name (the exports made from its weights included), its checkpoint first.
RUN_FILES = (".ckpt", ".ckpt.epoch-end", ".pth", ".json", ".csv", ".png", ".onnx", ".pt2", ".config.json")
RESULTS = "results.txt"  # the reference implementation's one line per finished run
REPLACED = "replaced"  # the folder in the output directory that the files of replaced runs are moved to
_MARKS = (".json", ".ckpt", ".config.json")  # a run exists under a name: finished, under way, or started
_RECORD_BYTES = 16 << 20  # more than any run's JSON; a larger file is not read to find a name


@dataclass(frozen=True)
class RunPaths:
    """Every file of the run `name` in `output_dir`: checkpoint, weights, JSON, CSV, figure, options, lock, log."""

    output_dir: Path
    name: str

    @classmethod
    def of(cls, config: TrainConfig) -> RunPaths:
        """The paths of `config`'s run (a TrainConfig: its output_dir and run_name). A run that an earlier version
        started or finished under its former name (`legacy_run_name`) keeps that name when nothing exists under
        the new one and its recorded recipe is this one: it is resumed or reused, not trained again."""
        paths = cls(Path(config.output_dir), config.run_name)
        if config.legacy_run_name == paths.name or any(paths.with_suffix(s).exists() for s in _MARKS):
            return paths
        legacy = cls(paths.output_dir, config.legacy_run_name)
        recorded = _recorded_recipe(legacy)
        return legacy if recorded is not None and not recipe_differences(recorded, config) else paths

    def with_suffix(self, suffix: str) -> Path:
        return self.output_dir / f"{self.name}{suffix}"

    @property
    def checkpoint(self) -> Path:
        return self.with_suffix(".ckpt")

    @property
    def epoch_checkpoint(self) -> Path:
        """The checkpoint of the last epoch's end, kept while the run's checkpoint is one inside the next epoch: a
        run resumed by another number of processes goes on from it (a checkpoint inside an epoch holds each rank's
        place in it)."""
        return self.with_suffix(".ckpt.epoch-end")

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


def _recorded_recipe(paths: RunPaths) -> dict | None:
    """The configuration a run's files record: its finished JSON's, else the one written when it started."""
    for path in (paths.summary, paths.config):
        try:
            if not path.is_file() or path.stat().st_size > _RECORD_BYTES:
                continue
            record = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if path == paths.summary:
            summary = record.get("summary") if isinstance(record, dict) else None
            record = summary.get("config") if isinstance(summary, dict) else None
        if isinstance(record, dict):
            return record
    return None
