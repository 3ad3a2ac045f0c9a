"""A training checkpoint's fields, declared once (CHECKPOINT_FIELDS): which a checkpoint must hold, which it may, how
each is checked before a run trusts it, and what `upgrade` gives a file of an older format that lacks one.
`save_checkpoint` refuses to write a record that the table does not describe, and `load_checkpoint` reads every
file through `upgrade` and `check_checkpoint`, so the run sees one shape whatever version wrote it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import LAYOUTS
from ..config.recipe import shown
from ..errors import CheckpointError
from .integrity import entry_ok, is_count, is_number

__all__ = ["Field", "Expected", "CHECKPOINT_FIELDS", "REQUIRED", "upgrade", "check_present", "check_checkpoint",
           "check_saved"]


@dataclass(frozen=True)
class Expected:
    """What the run resuming a checkpoint expects of it: its epochs, and its seed when given."""

    epochs: int
    seed: int | None


# A field's check: given its value, the whole record and what the run expects, what is wrong with it, or None.
Problem = Callable[[Any, dict, Expected], "str | None"]


@dataclass(frozen=True)
class Field:
    problem: Problem | None = None
    required: bool = True  # a checkpoint without it is not a training checkpoint
    default: Any = None  # what upgrade() gives a file written before the field existed (when not required)
    # What a field that is not required means when absent in the current format: "older" (only files of older
    # versions lack it: upgrade fills `default`), "optional" (only some runs save it: lookahead).
    absent: str = "older"


def _count(low: int, what: str) -> Problem:
    return lambda v, r, e: None if is_count(v, low) else f"its {what} {v!r} is not a positive integer"


def _seed(v: Any, r: dict, e: Expected) -> str | None:
    return None if is_count(v) and (e.seed is None or v == e.seed) else f"its seed {v!r} is not the run's"


def _epoch(v: Any, r: dict, e: Expected) -> str | None:
    return None if is_count(v, 0, e.epochs) else f"its epoch {v!r} is not one of 0..{e.epochs}"


def _step(v: Any, r: dict, e: Expected) -> str | None:
    fits = is_count(v) and (v > 0) == (r["partial"] is not None)
    return None if fits else f"its step {v!r} does not go with its epoch's sums"


def _partial(v: Any, r: dict, e: Expected) -> str | None:
    """An interrupted epoch's sums: loss and correct, the sampled figures (checkpoints since 0.3), seen, seconds."""
    if v is None:
        return None
    sums = ["loss", "correct", *(k for k in ("sampled_loss", "sampled_acc") if isinstance(v, dict) and k in v)]
    ok = (isinstance(v, dict) and all(isinstance(v.get(k), torch.Tensor) and v[k].numel() == 1 for k in sums)
          and is_count(v.get("seen"), 1) and is_number(v.get("seconds")))
    return None if ok else "its interrupted epoch's sums are malformed"


def _history(v: Any, r: dict, e: Expected) -> str | None:
    ok = (isinstance(v, list) and len(v) == r["epoch"] and all(entry_ok(h, i + 1) for i, h in enumerate(v)))
    return None if ok else f"its history is not {r['epoch']} epoch(s) of losses and accuracies"


def _rng(v: Any, r: dict, e: Expected) -> str | None:
    ok = isinstance(v, list) and len(v) == r["world_size"] and all(
        isinstance(s, dict) and all(isinstance(s.get(k), torch.Tensor) and s[k].dtype == torch.uint8
                                    for k in ("torch", "augment")) for s in v)
    return None if ok else "its random states are malformed"


def _layout(v: Any, r: dict, e: Expected) -> str | None:
    ok = v is None or (isinstance(v, str) and v in LAYOUTS)
    return None if ok else f"its layout {shown(v)} is not one of {', '.join(LAYOUTS)}"


def _provenance(v: Any, r: dict, e: Expected) -> str | None:
    ok = isinstance(v, list) and all(isinstance(session, dict) for session in v)
    return None if ok else f"its provenance {shown(v)} is not a list of the sessions that trained it"


def _state_dict(what: str) -> Problem:
    return lambda v, r, e: None if isinstance(v, dict) else f"its {what} is not a state dict"


def _weights(v: Any, r: dict, e: Expected) -> str | None:
    ok = isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values())
    return None if ok else "its weights are not a state dict of tensors"


def _lookahead(v: Any, r: dict, e: Expected) -> str | None:
    ok = isinstance(v, list) and all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in v)
    return None if ok else "its lookahead average is not a list of floating-point tensors"


# In the order a checkpoint holds them (after "format", before "checksum"). The checks run in this order, each
# after those of the fields it reads (step reads partial's presence, history epoch's, rng world_size's).
CHECKPOINT_FIELDS: dict[str, Field] = {
    "version": Field(required=False, default=None),  # of sbattn; only reported
    "config": Field(),  # a mapping (check_present), of the run's recipe (load_checkpoint)
    "num_classes": Field(_count(1, "number of classes")),
    "world_size": Field(_count(1, "number of processes")),
    "seed": Field(_seed),
    "layout": Field(_layout, required=False, default=None),  # before 0.2: the device's rule (train/loop.py)
    "epoch": Field(_epoch),
    "step": Field(_step),
    "partial": Field(_partial),
    "history": Field(_history),
    "model": Field(_weights),
    "optimizer": Field(_state_dict("optimiser")),
    "scheduler": Field(_state_dict("learning-rate schedule")),
    "scaler": Field(_state_dict("loss scaler")),
    "rng": Field(_rng),
    "provenance": Field(_provenance, required=False, default=[]),  # before provenance was recorded: none
    "data": Field(required=False, default=None),  # before 0.2: the number of classes alone (check_same_data)
    "lookahead": Field(_lookahead, required=False, absent="optional"),  # the runs with --lookahead-every
}
REQUIRED = frozenset(name for name, f in CHECKPOINT_FIELDS.items() if f.required)


def upgrade(record: dict) -> dict:
    """A checkpoint of any format this version reads, in the current shape: each field that older files lack given
    its default. The record is not changed."""
    missing = {name: f.default for name, f in CHECKPOINT_FIELDS.items()
               if name not in record and not f.required and f.absent == "older"}
    return {**record, **missing}


def check_present(record: dict, path: Path) -> None:
    """Refuse, in one line, a file that lacks a field every training checkpoint holds, or whose configuration is not
    a mapping (what the run compares with its own before anything else)."""
    missing = sorted(REQUIRED - record.keys())
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (it lacks {', '.join(missing)}); "
                              f"move it away to start over")
    if not isinstance(record["config"], dict):
        raise CheckpointError(f"{path}: its configuration is not a mapping; the file is damaged: move it away to "
                              f"start over")


def check_checkpoint(record: dict, path: Path, expected: Expected) -> None:
    """Refuse, in one line naming the field, a checkpoint of the run's recipe that holds a field the run would take
    on trust in a form it cannot use (check_present first)."""
    for name, f in CHECKPOINT_FIELDS.items():
        problem = None if f.problem is None or name not in record else f.problem(record[name], record, expected)
        if problem:
            raise CheckpointError(f"{path}: {problem}; the file is damaged: move it away to start over")


def check_saved(state: dict) -> None:
    """What a run is about to save, against the table: a field it does not declare, or a required one missing, is
    a mistake in sbattn, caught before a checkpoint that no version could read is written."""
    undeclared = sorted(state.keys() - CHECKPOINT_FIELDS.keys())
    missing = sorted(REQUIRED - state.keys())
    if undeclared or missing:
        raise ValueError(f"a checkpoint must hold the fields of records.schema.CHECKPOINT_FIELDS: "
                         f"undeclared {undeclared}, missing {missing}")
