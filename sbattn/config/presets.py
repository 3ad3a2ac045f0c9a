"""Named recipes: what `--preset NAME` sets, for `train` as for the suites. The command line and --config's file
win over a preset; a suite's own defaults (compare's sigmoid) lie under it."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ConfigError
from .train_config import TrainConfig

__all__ = ["PRESETS", "PRESET_ALIASES", "SUITE_OPTIONS", "preset", "preset_options", "preset_jobs", "preset_help"]

SUITE_OPTIONS = ("jobs",)  # what a preset may set besides the training options: a suite's runs at once
_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def preset(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """A preset's values, refused in one line when one names no option (a typo would be dropped silently)."""
    unknown = sorted(set(values) - _FIELDS - set(SUITE_OPTIONS))
    if unknown:
        raise ConfigError(f"preset {name!r}: {', '.join(unknown)}: not an option of train nor of the suites")
    return dict(values)


# quick's two jobs: at this width a 2-core CPU trains about 1.3x more images per second as two one-thread
# processes than as one two-thread process.
PRESETS: dict[str, dict[str, Any]] = {
    "reference": preset("reference", {"epochs": 80, "batch_size": 64, "milestones": [40, 60, 80], "width": 1.0}),
    "quick": preset("quick", {"width": 0.25, "epochs": 18, "milestones": [9, 14], "batch_size": 64, "jobs": 2}),
}
# airbench94's training (Jordan, arXiv 2404.00498), the numbers as its published code sets them: 9.9 epochs of
# 1024 (the last batch of each epoch dropped), Nesterov SGD in its decoupled form, BatchNorm biases at 64x the rate,
# label smoothing, a per-step warm-up and warm-down, lookahead, the alternating flip and 2-pixel translations, the
# whitening bias frozen after 3 epochs, and test-time augmentation of the final accuracy.
PRESETS["airbench"] = preset("airbench", {
    "arch": "airbench", "batch_size": 1024, "epochs": 9.9, "drop_last": True, "optimizer": "sgd_decoupled",
    "init_lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153, "bn_bias_lr": 64.0, "label_smoothing": 0.2,
    "schedule": "warmup_warmdown", "warmup": 0.23, "lr_start": 0.2, "lr_end": 0.07, "lookahead_every": 5,
    "lookahead_decay": 0.95, "whiten_bias_epochs": 3, "augment": "airbench", "tta": 2, "jobs": 1})
PRESET_ALIASES = {"seed": "reference"}  # the name the reference's recipe had before


def _values(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    try:
        return PRESETS[PRESET_ALIASES.get(name, name)]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join([*PRESETS, *PRESET_ALIASES])}") from None


def preset_options(name: str | None) -> dict[str, Any]:
    """The training options preset `name` sets (none for None)."""
    return {k: v for k, v in _values(name).items() if k in _FIELDS}


def preset_jobs(name: str | None) -> int | None:
    """The runs a suite trains at once under preset `name`, when it says."""
    return _values(name).get("jobs")


def preset_help() -> str:
    presets = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                        for name, values in PRESETS.items())
    aliases = ", ".join(f"{alias} is {name}" for alias, name in PRESET_ALIASES.items())
    return (f"a named recipe, one of {', '.join(PRESETS)} ({aliases}); --config's file and the options given win "
            f"over it ({presets}; jobs: the suites' runs at once)")
