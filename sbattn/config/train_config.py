"""TrainConfig: one run's recipe and where and how this process trains it, validated when built.

The recipe's fields (config/recipe.py) decide the result; the fields here (the device, the folders, the layout,
--compile, resuming) may change between the processes that train one run. The command line is generated from
both (cli/options.py), so a field added here or there is a flag everywhere.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..system import TENSORBOARD_HINT, tensorboard_available
from .recipe import Recipe, fail, option, shown

__all__ = ["TrainConfig", "resolve_device", "saved_options", "LAYOUTS", "COMPILE_MODES", "TRUE_WORDS",
           "FALSE_WORDS", "canonical_compile"]

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}  # memory formats by name
# none: eager; model: torch.compile the model (forward and backward); step: the whole training step compiled
# (forward, backward, the optimiser step and the epoch's sums), its batches augmented a whole epoch at once.
COMPILE_MODES = ("none", "model", "step")
# What one invocation does to a run, rather than what the run is or where it trains.
ACTIONS = ("resume", "overwrite", "download")
# How booleans are spelled on the command line and in saved configurations; --compile was a boolean before.
TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")
# The folder options, and what none of them may hold: a control character (a newline, an escape, a NUL) is never
# meant in a folder's name; it breaks the log's lines, drives the terminal, or ends in a traceback from the OS.
FOLDERS = ("data_dir", "cache_dir", "output_dir")
MAX_DIST_TIMEOUT = 86400.0
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # with text-direction overrides


@dataclass
class TrainConfig(Recipe):
    """A Recipe and how this process trains it: the device, the folders, the layout, --compile, threads, torchrun's
    timeout, checkpoints inside epochs, and the actions of this invocation (--resume, --overwrite). The command line
    and --config files are generated from its fields (cli/options.py); `rerun_options` is what a run's
    `<run>.config.json` holds."""

    device: str | None = option(None, "cuda, cuda:N, cpu or mps; none given: CUDA when present, else the CPU",
                                reference=True)
    data_dir: str = option("./data", "where CIFAR-10 is (any supported form), or will be downloaded to")
    download: bool = option(False, "download the official archive into --data-dir if it is not there")
    cache_dir: str | None = option(None, "cache of decoded arrays; none given: $SBATTN_CACHE, else ~/.cache/sbattn")
    resize: bool = option(False, "accept image-folder images that are not 32x32 RGB, resizing and converting them")
    output_dir: str = option("./results", "where results, figures and checkpoints go")
    eval_batch_size: int = option(1000, "evaluation batch size")
    layout: str = option("auto", "memory layout of training; auto: measured once per machine and model on a CPU "
                                 "(cached), channels-last on CUDA", choices=lambda: ["auto", *LAYOUTS])
    compile: str = option("none", "torch.compile: model (the flag alone; on CUDA, CUDA graphs for forward and "
                                  "backward), or step: the whole training step with the optimiser, each epoch's "
                                  "augmentation drawn at once (seeded by seed and epoch); True and False stand for "
                                  "model and none",
                          choices=lambda: list(COMPILE_MODES), bare="model")
    threads: str = option("auto", "CPU threads of the run: N pins N for the whole run; auto: the count it starts "
                                  "with (OMP_NUM_THREADS, else torch's default), lowered while other processes hold "
                                  "cores and raised for a suite's last run, except in the reference's arithmetic "
                                  "(--precision fp32 --rng reference), whose count stays what it started with")
    dist_timeout: float = option(300.0, "under torchrun, seconds a collective waits for every rank: a rank that "
                                        "died or hung then stops the run with one line naming it, the last good "
                                        "checkpoint kept")
    sync_bn: bool = option(True, "under torchrun, synchronise every BatchNorm (the attention's too) across "
                                 "processes")
    checkpoint_steps: int = option(0, "also checkpoint every N training steps inside an epoch (0: at each epoch's "
                                      "end only; Ctrl-C and SIGTERM checkpoint at the step anyway), so that a run "
                                      "killed mid-epoch (a worker's death under torchrun, SIGKILL, a power cut) "
                                      "resumes at the last such step, not at the epoch's start")
    resume: bool = option(False, "continue from the run's last checkpoint in --output-dir")
    tensorboard: bool = option(False, "write each epoch's scalars (losses, accuracies, learning rate, throughput, "
                                      "SB's |lambda| per block) for TensorBoard under --output-dir/tensorboard/<run>; "
                                      f"needs {TENSORBOARD_HINT}")
    overwrite: bool = option(False, "train a finished (or unfinished) run again from the beginning, its earlier "
                                    "files moved aside first into --output-dir/replaced/")

    def validate(self) -> None:
        self.compile = canonical_compile(self.compile)  # a boolean before 0.2
        super().validate()
        if self.eval_batch_size < 1:
            fail(self, "eval_batch_size", "must be an integer >= 1")
        if self.threads != "auto" and not (str(self.threads).isdigit() and int(self.threads) >= 1):
            fail(self, "threads", "must be auto or a number of threads >= 1")
        self.threads = str(self.threads)
        if self.checkpoint_steps < 0:
            fail(self, "checkpoint_steps", "must be an integer >= 0 (0: checkpoint at each epoch's end only)")
        if not 0 < self.dist_timeout <= MAX_DIST_TIMEOUT:
            fail(self, "dist_timeout", f"must be a number of seconds > 0 and at most {MAX_DIST_TIMEOUT:g} (a day)")
        for name in FOLDERS:
            folder = getattr(self, name)
            if folder is not None and CONTROL_CHARACTER.search(folder):
                fail(self, name, "holds a control character (a newline, an escape, a NUL, a text-direction "
                                 "override, ...): name the folder without one")
            if isinstance(folder, str) and folder.startswith("~"):  # every folder alike, the output's too
                if os.path.expanduser(folder).startswith("~"):
                    fail(self, name, "begins with the home folder of a user this machine does not have")
                setattr(self, name, os.path.expanduser(folder))
        if self.overwrite and self.resume:
            raise ConfigError("overwrite=True and resume=True: --overwrite starts the run afresh, --resume continues "
                              "it; choose one")
        self.device = resolve_device(self.device)
        if self.tensorboard and not tensorboard_available():
            raise ConfigError(f"tensorboard=True: the tensorboard package is not installed; {TENSORBOARD_HINT}")

    @property
    def resolved_device(self) -> str:
        """The device as validation resolves it (validated, `device` is never None)."""
        return self.device if self.device is not None else resolve_device(None)

    def rerun_options(self) -> dict[str, Any]:
        """The options that train this run again or continue it, as a run's configuration file holds them: the
        actions of this invocation (ACTIONS: --resume, --overwrite, --download) left out."""
        return {**self.to_dict(), **dict.fromkeys(ACTIONS, False)}

    def action_flags(self) -> list[str]:
        """The actions of this invocation as flags: with `--config` on rerun_options' file, the same
        configuration."""
        return [f"--{name}" for name in ACTIONS if getattr(self, name)]


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A dataclass field's default value: its default, or what its default_factory makes."""
    if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def saved_options(saved: dict[str, Any]) -> dict[str, Any]:
    """Every TrainConfig option of a run's saved configuration, as saved (not validated: the machine that reads it
    may lack the device or the packages of the one that trained it); the default for an option it lacks."""
    return {f.name: saved.get(f.name, field_default(f)) for f in dataclasses.fields(TrainConfig)}


def canonical_compile(mode: str | bool) -> str:
    """A --compile value in today's spelling: True and its words are "model", False and its words "none"; any other
    value as is (validation names it)."""
    if isinstance(mode, bool):
        return "model" if mode else "none"
    word = str(mode).strip().lower()
    return "model" if word in TRUE_WORDS else "none" if word in FALSE_WORDS else mode


def resolve_device(device: str | None) -> str:
    """None or "auto" picks CUDA when present, else the CPU; a device that is not there is a ConfigError."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={shown(device)}: not a device name; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={shown(device)}: CUDA is not available on this machine; use --device=cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device={shown(device)}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={shown(device)}: MPS is not available on this machine; use --device=cpu")
    elif parsed.type != "cpu":
        raise ConfigError(f"device={shown(device)}: unsupported; use cpu, cuda, cuda:N or mps")
    return str(parsed)
