"""Training checkpoints that refuse to be misused, and trained weights with their provenance."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Recipe, TrainConfig, recipe_differences, saved_options
from ..errors import CheckpointError
from ..files import atomic_write
from ..models import create_model
from ..version import __version__
from .integrity import check_container, check_tensors, check_weights_fit, seal, verify_checksum
from .schema import Expected, check_checkpoint, check_present, check_saved, upgrade

__all__ = ["CHECKPOINT_FORMAT", "WEIGHTS_FORMAT", "save_checkpoint", "load_checkpoint", "save_weights", "load",
           "read_record", "unwrap", "recorded"]

CHECKPOINT_FORMAT = 3  # 2: every rank's random state, and the number of processes; 3: a checksum, always
CHECKPOINT_FORMATS_READ = (2, 3)
# Weights files (.pth, with a "state_dict") are numbered apart from checkpoints, so that a checkpoint's change
# leaves every weights file loadable. 1 and 2: written by sbattn 0.1 under the checkpoint's number of the day (the
# earliest without num_classes: 10 classes); 3: numbered apart, the run's provenance in its summary.
WEIGHTS_FORMAT = 3
WEIGHTS_FORMATS_READ = (1, 2, 3)
# The first format of each kind whose every file carries a checksum: a file of it without one was stripped of it.
# Weights: 3. Checkpoints: 3, since sbattn 0.1.0 wrote checkpoints of format 2 without one (a literal: bumping
# CHECKPOINT_FORMAT must not move it, or checksum-less files of the new format would pass).
SEALED_SINCE = {"weights": 3, "checkpoint": 3}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint: `state` holds the fields records.schema declares, sealed with a checksum."""
    check_saved(state)
    record = seal({"format": CHECKPOINT_FORMAT, **state})
    atomic_write(path, lambda f: torch.save(record, f))


def read_record(path: str | Path) -> dict:
    """The dict of a file sbattn wrote (.pth or .ckpt), checked for its format; CheckpointError if unusable."""
    path = Path(path)
    check_container(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, foreign file: all the same to the user
        raise CheckpointError(f"{path} is damaged or not an sbattn file ({type(e).__name__}); "
                              f"move it away to start over") from None
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(f"{path} is not an sbattn file; move it away to start over")
    kind = "weights" if "state_dict" in obj else "checkpoint"
    readable = WEIGHTS_FORMATS_READ if kind == "weights" else CHECKPOINT_FORMATS_READ
    number = obj["format"]
    if type(number) is not int or number not in readable:  # True == 1, but no file sbattn wrote says True
        raise CheckpointError(f"{path} has format {number!r}, this sbattn reads {kind} format "
                              f"{', '.join(map(str, readable))} (written by sbattn {obj.get('version', '?')}); use "
                              f"it with that version or move it away")
    try:
        check_tensors(obj, path)
        verify_checksum(obj, path, required=number >= SEALED_SINCE[kind])
    except RecursionError:  # lists in lists ... deeper than the stack: never what sbattn writes
        raise CheckpointError(f"{path} nests its contents deeper than any file sbattn writes; refusing to read "
                              f"it") from None
    return obj


def load_checkpoint(path: str | Path, config: TrainConfig) -> dict:
    """Read a training checkpoint, in the current shape (schema.upgrade), and check it belongs to `config`'s run."""
    path = Path(path)
    ckpt = upgrade(read_record(path))
    check_present(ckpt, path)
    differences = recipe_differences(ckpt["config"], config)
    if differences:
        raise CheckpointError(f"{path} is from another configuration ({'; '.join(differences)}); "
                              f"run with its settings or move it away to start over")
    check_checkpoint(ckpt, path, Expected(config.epoch_count, config.seed))
    return ckpt


def save_weights(path: str | Path, model: nn.Module, config: TrainConfig, history: list[dict],
                 summary: dict, num_classes: int = 10) -> None:
    """The trained model as a state dict, with what rebuilds and explains it beside it."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    record = seal({"format": WEIGHTS_FORMAT, "version": __version__, "config": config.to_dict(),
                   "num_classes": num_classes, "state_dict": state, "history": history, "summary": summary})
    atomic_write(path, lambda f: torch.save(record, f))


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from a .pth written by training (or a training checkpoint), in eval mode; its
    `config` is the run's Recipe, `trained_with` the options it was trained with, `history` its epochs.

    A missing, damaged or foreign file, or weights that do not fit the recorded model, is a CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (give the .pth that training wrote)")
    obj = read_record(path)
    if "state_dict" in obj:
        state = obj["state_dict"]
    elif "model" in obj:
        state = obj["model"]
    else:
        raise CheckpointError(f"{path} holds no model weights")
    try:
        recipe: Recipe = Recipe.from_dict(obj["config"])
        num_classes = obj.get("num_classes", 10)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise CheckpointError(f"{path}: its number of classes {num_classes!r} is not a positive integer")
        with torch.device("meta"):  # the weights must fit the model before it takes any memory
            skeleton = create_model(recipe.arch, num_classes=num_classes, **recipe.model_options())
        check_weights_fit(skeleton, state, path, f"its {recipe.arch} model")
        model = create_model(recipe.arch, num_classes=num_classes, **recipe.model_options())
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:  # a configuration that builds no model
        first_line = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot rebuild its model ({type(e).__name__}: {first_line})") from None
    # What the model is, and the options of the run that trained it (its data, its evaluation batch, ...): plain
    # attributes, which torch's stubs of Module.__setattr__ leave out (they take tensors and modules alone).
    model.num_classes = num_classes  # type: ignore[assignment]
    model.config = recipe  # type: ignore[assignment]
    model.trained_with = saved_options(obj["config"])  # type: ignore[assignment]
    model.history = obj.get("history", [])
    return model.to(device).eval()


def recorded(model: nn.Module) -> tuple[Recipe, dict[str, Any], int]:
    """What load() recorded on the model it rebuilt: its Recipe, the options it was trained with, its number of
    classes."""
    return getattr(model, "config"), getattr(model, "trained_with"), getattr(model, "num_classes")
