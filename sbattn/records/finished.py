"""Finished runs: the record a run's JSON holds once it finished, every field checked for type and range when it
is read (the one place that reads them), and the one check that a finished run is the run asked for."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..config import Recipe, canonical_config, recipe_differences
from ..config.recipe import MAX_SEED, shown
from ..errors import UserError
from ..nn import list_attention
from .integrity import entry_ok, is_count, is_number
from .paths import RunPaths

__all__ = ["FinishedRun", "read_finished", "read_run", "finished_run"]


_TEXT = (lambda v: isinstance(v, str), "a string")
_POSITIVE = (lambda v: is_count(v, 1), "a positive integer")
# Each field of a finished run's summary and configuration that the tables, figures and training read: (check, what
# it must be). A field a run of any version writes; a missing one is None.
SUMMARY_FIELDS = {"final_eval_acc": (lambda v: is_number(v, 0, 1), "an accuracy from 0 to 1"),
                  "params": _POSITIVE, "train_seconds": (lambda v: is_number(v, 0), "a number of seconds >= 0"),
                  "run": (lambda v: v is None or isinstance(v, str), "the run's name")}
CONFIG_FIELDS = {**dict.fromkeys(("activation", "arch", "placement", "dataset", "augment", "precision",
                                  "lambda_init"), _TEXT),
                 **dict.fromkeys(("attn_ratio", "width", "init_lr", "gamma", "weight_decay"),
                                 (is_number, "a finite number")),
                 **dict.fromkeys(("batch_size", "eval_every"), _POSITIVE),
                 "epochs": (lambda v: is_number(v, 1), "a number >= 1"),
                 "milestones": (lambda v: isinstance(v, list) and all(is_count(m, 1) for m in v),
                                "a list of positive integers"),
                 "seed": (lambda v: v is None or is_count(v, 0, MAX_SEED), f"null or an integer from 0 to {MAX_SEED}")}


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


def _read(path: Path) -> tuple[FinishedRun | None, str | None]:
    """(the finished run in `path`, None); (None, None) when it holds none (unreadable, a table, an unfinished
    run); (None, what is wrong) when its summary says complete but a field is not what a finished run holds."""
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    summary = data.get("summary")
    if not (isinstance(summary, dict) and summary.get("complete") is True):
        return None, None
    problem = _problem(summary, data.get("history"))
    if problem:
        return None, problem
    return FinishedRun(summary.get("run") or path.stem, canonical_config(summary["config"]), summary,
                       data["history"]), None


def _problem(summary: dict, history: object) -> str | None:
    """The first field of a finished run's record that is not what a finished run holds, and what it must be."""
    def wrong(name: str, value: object, what: str) -> str:
        return f"{name} is {'null or missing' if value is None else shown(value, 60)}, not {what}"

    if not isinstance(summary.get("config"), dict):
        return wrong("summary.config", summary.get("config"), "a run's configuration")
    config = canonical_config(summary["config"])
    for where, fields, values in (("summary", SUMMARY_FIELDS, summary), ("summary.config", CONFIG_FIELDS, config)):
        for name, (ok, what) in fields.items():
            if not ok(values.get(name)):
                return wrong(f"{where}.{name}", values.get(name), what)
    kinds = ["none", *list_attention()]
    if not (isinstance(config["attention"], str) and config["attention"] in kinds):
        return wrong("summary.config.attention", config["attention"], f"an attention kind registered here "
                     f"({', '.join(kinds)}; register a kind of your own before reading its runs)")
    if not (isinstance(history, list) and len(history) == math.ceil(config["epochs"])):
        return f"history is not a list of {math.ceil(config['epochs'])} epoch(s)"
    bad = next((i for i, entry in enumerate(history) if not (entry_ok(entry, i + 1) and all(
        entry.get(k) is None or isinstance(entry[k], list) and all(map(is_number, entry[k]))
        for k in ("lambda_abs_mean", "lambda_abs_std")))), None)
    if bad is not None:
        return f"history[{bad}] is not epoch {bad + 1}'s record (its numbers, accuracies from 0 to 1)"
    return None


def read_finished(path: str | Path) -> FinishedRun | None:
    """The finished run in `path`, or None when `path` holds none (a table, an unfinished run, something else); a
    UserError naming the file and the field when its summary says complete but a field is not what a run writes."""
    run, problem = _read(Path(path))
    if problem:
        raise UserError(f"{path}: {problem}: the file was edited or damaged; restore it from a copy, or move it away",
                        code=2)
    return run


def read_run(paths: RunPaths) -> FinishedRun | None:
    """The finished run at `paths`, or None when there is none. A UserError when its record is damaged: a field that
    is not what a run writes, or no readable record beside the weights that only a finished run leaves (its .pth,
    without a checkpoint to finish it from)."""
    run, problem = _read(paths.summary)
    weights = paths.weights.is_file() and not paths.checkpoint.exists()
    if run is None and problem is None and weights:
        problem = "truncated or unreadable" if paths.summary.exists() else "no such file"
    if problem:
        beside = f", beside the trained weights {paths.weights} of a finished run" if weights else ""
        raise UserError(f"{paths.summary}: {problem}{beside}: restore it from a copy, or move the run's files away "
                        f"(sbattn train --overwrite moves them aside and trains the run again)", code=2)
    return run


def finished_run(paths: RunPaths, recipe: Recipe, remedy: str) -> FinishedRun | None:
    """The finished run at `paths` when there is one; one of another recipe is a UserError ending in `remedy`; a
    damaged one (read_run) is a UserError."""
    run = read_run(paths)
    if run is not None:
        differences = recipe_differences(run.config, recipe)
        if differences:
            raise UserError(f"{paths.summary} is a finished run of another recipe ({'; '.join(differences)}): "
                            f"{remedy}", code=2)
    return run
