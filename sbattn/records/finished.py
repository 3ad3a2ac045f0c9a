"""Finished runs: the record a run's JSON holds once it finished, and the one check that a finished run is the
run asked for."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import Recipe, canonical_config, recipe_differences
from ..errors import UserError
from .paths import RunPaths

__all__ = ["FinishedRun", "read_finished", "finished_run"]


@dataclass
class FinishedRun:
    """A finished run, as its JSON file holds it."""

    name: str
    config: dict  # its saved configuration, in today's spelling
    summary: dict
    history: list[dict]

    @property
    def final_acc(self) -> float:
        """Final test accuracy in percent."""
        return 100.0 * self.summary["final_eval_acc"]


def read_finished(path: str | Path) -> FinishedRun | None:
    """The finished run in `path`, or None when `path` holds none (a table, an unfinished run, something
    else)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    summary = data.get("summary") if isinstance(data, dict) else None
    if not (isinstance(summary, dict) and summary.get("complete") is True and isinstance(summary.get("config"), dict)
            and isinstance(data.get("history"), list) and isinstance(summary.get("final_eval_acc"), (int, float))):
        return None
    return FinishedRun(summary.get("run", path.stem), canonical_config(summary["config"]), summary, data["history"])


def finished_run(paths: RunPaths, recipe: Recipe, remedy: str) -> FinishedRun | None:
    """The finished run at `paths` when there is one; one of another recipe is a UserError ending in `remedy`."""
    run = read_finished(paths.summary)
    if run is not None:
        differences = recipe_differences(run.config, recipe)
        if differences:
            raise UserError(f"{paths.summary} is a finished run of another recipe ({'; '.join(differences)}): "
                            f"{remedy}", code=2)
    return run
