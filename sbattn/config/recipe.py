"""What a run is: its recipe, typed and validated when built.

The recipe is what makes two runs the same run (the model, the data, the optimiser's hyper-parameters, the seed,
the precision asked for); a finished run, a checkpoint and a weights file are read back as one, without the
options of the process that trained them. The reference implementation's hyper-parameters keep its names and
defaults. TrainConfig (config/train_config.py) adds where and how this process trains it.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch

from ..data import AUGMENTS, DATASETS
from ..data.augmentation import canonical_augment
from ..errors import ConfigError, SbattnError, clip, shown
from ..models import PLACEMENTS, create_model, default_placement, list_models
from ..nn import LAMBDA_INITS, list_activations, list_attention
from ..optim import OPTIMIZERS, SCHEDULES

__all__ = ["Recipe", "RECIPE_FIELDS", "PRECISIONS", "RNG_MODES", "canonical_config", "recipe_differences", "option",
           "shown", "clip"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Where a run's random draws come from: sbattn's own streams (per run, epoch and rank; augmentation batched on the
# device), or the reference implementation's (the global torch generator, through its DataLoader and torchvision
# transforms, one image at a time; data/reference_draws.py).
RNG_MODES = ("sbattn", "reference")

# Limits of what a run can take, checked when the recipe is built rather than after the data has loaded.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # the optimiser takes its rates in float32
MAX_SEED = 2**63 - 1  # a seed plus a rank's and an epoch's offset must fit the generators' 64 bits
MAX_PARAMETERS = 10**9  # 12 GB of weights, gradients and momenta before any activation
MAX_MULTIPLIER = 64  # width and attn_ratio: beyond it every registered model is past MAX_PARAMETERS


def option(default: Any, help: str, reference: bool = False, choices: Callable[[], list[str]] | None = None,
           bare: str | None = None) -> Any:
    """A configuration field with its CLI help; reference=True marks the reference implementation's own flags
    (spelled with underscores); choices: the allowed values, from the registry that defines them; bare: the value
    of the option given without one (--compile alone)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "reference": reference, "choices": choices, "bare": bare})


R = TypeVar("R", bound="Recipe")  # a Recipe or a subclass (TrainConfig): what its methods return

@dataclass
class Recipe:
    """What makes two runs the same run: the model, the data, the training's hyper-parameters and the seed, each a
    typed field with its command-line help, validated when built (one-line ConfigError). `run_name` names a run's
    files; `to_dict`/`from_dict` are its JSON form; TrainConfig adds where and how one process trains it."""

    # The reference implementation's hyper-parameters, with its README's defaults.
    attn_ratio: float = option(0.5, "hidden size ratio of the attention branch", reference=True)
    use_sb: bool = option(True, "Shift-and-Balance attention (the reference's spelling of --attention sb)",
                          reference=True)
    use_se: bool = option(False, "Squeeze-and-Excitation attention (the reference's spelling of --attention se; "
                                 "not together with use_sb)", reference=True)
    activation: str = option("tanh", "SB activation", reference=True, choices=list_activations)
    epochs: float = option(80, "training epochs; a fraction trains the last one in part (airbench: 9.9)",
                           reference=True)
    batch_size: int = option(64, "batch size (the global batch under torchrun)", reference=True)
    init_lr: float = option(0.1, "initial learning rate", reference=True)
    gamma: float = option(0.2, "learning-rate decay factor at each milestone", reference=True)
    milestones: list[int] = option(lambda: [40, 60, 80], "epochs at which the learning rate decays", reference=True)
    weight_decay: float = option(9e-6, "weight decay on every parameter", reference=True)
    # The project's own.
    attention: str | None = option(None, "attention block by registered name, or none; given, it sets --use_sb and "
                                         "--use_se; none given: from --use_sb and --use_se",
                                   choices=lambda: ["none", *list_attention()])
    arch: str = option("vgg16", "model architecture (timm:NAME: timm's model NAME, with pip install \"sbattn[timm]\")",
                       choices=lambda: [*list_models(), "timm:NAME"])
    placement: str = option("auto", "attention at the end of each stage (stage), after each residual block (block) "
                                    "or after each conv layer (layer); auto: the architecture's own (VGG: stage, "
                                    "the reference's; ResNets: block, SE-ResNet's)",
                            choices=lambda: ["auto", *PLACEMENTS])
    width: float = option(1.0, "width multiplier for every conv and classifier layer")
    lambda_init: str = option("normal", "SB lambda initialisation (normal: the reference's)",
                              choices=lambda: list(LAMBDA_INITS))
    dataset: str = option("cifar10", "dataset (fake: a small synthetic set for smoke runs)",
                          choices=lambda: list(DATASETS))
    augment: str = option("reference", "training augmentation (reference: the reference implementation's; "
                                       "seed: the same, its former name)", choices=lambda: list(AUGMENTS))
    seed: int | None = option(None, "random seed; also names the run's files so seeds never overwrite each other; "
                                    "none given: a random one, recorded in the run's files")
    eval_every: int = option(1, "evaluate every N epochs (the last epoch always)")
    precision: str = option("auto", "auto: bf16 where the device has it, else fp16 on CUDA, else fp32",
                            choices=lambda: list(PRECISIONS))
    rng: str = option("sbattn", "random draws: sbattn (streams per seed, epoch and rank; augmentation batched on "
                                "the device) or reference (the reference implementation's: its DataLoader's and "
                                "torchvision's draws from the global torch generator, Pillow's augmentation, one "
                                "image at a time; one process, slower)", choices=lambda: list(RNG_MODES))
    # How the weights move: the reference's Nesterov SGD and MultiStepLR unless a preset (airbench) says otherwise.
    optimizer: str = option("sgd", "optimiser: sgd (the reference's: Nesterov SGD, PyTorch's learning rate and "
                                   "weight decay) or sgd_decoupled (airbench's: the loss summed, --init_lr and "
                                   "--weight_decay per 1024 examples, independent of momentum and of each other)",
                            choices=lambda: list(OPTIMIZERS))
    momentum: float = option(0.9, "Nesterov momentum")
    schedule: str = option("multistep", "learning-rate schedule: multistep (per epoch: times --gamma at each "
                                        "milestone) or warmup_warmdown (per batch: from --lr-start up to 1 over "
                                        "the first --warmup of the steps, then down to --lr-end)",
                           choices=lambda: list(SCHEDULES))
    warmup: float = option(0.23, "warmup_warmdown: the share of the steps that warm up")
    lr_start: float = option(0.2, "warmup_warmdown: the rate's factor at the first step")
    lr_end: float = option(0.07, "warmup_warmdown: the rate's factor at the last step")
    bn_bias_lr: float = option(1.0, "BatchNorm biases learn this many times faster (airbench: 64)")
    label_smoothing: float = option(0.0, "label smoothing of the training loss")
    lookahead_every: int = option(0, "lookahead: every N steps the weights move to their running average, "
                                     "decaying --lookahead-decay**N x (step/steps)**3, and to it at the end "
                                     "(0: none)")
    lookahead_decay: float = option(0.95, "lookahead's decay per step")
    whiten_bias_epochs: int | None = option(None, "the whitening layer's bias (--arch airbench) trains for this "
                                                  "many epochs, then holds still (none: throughout)")
    drop_last: bool = option(False, "drop each epoch's last, smaller batch (airbench's loader)")
    tta: int = option(0, "test-time augmentation of the final accuracy: 0 none, 1 the mirror image too, 2 also "
                         "translated a pixel both ways (airbench's level 2)")

    def __post_init__(self) -> None:
        if isinstance(self.milestones, tuple):
            self.milestones = list(self.milestones)
        self.validate()

    @property
    def run_name(self) -> str:
        """The reference's stem, vgg16_<ratio>_<use_sb>_<use_se>_<activation>, then the attention kind, placement
        and width where it cannot show them, the seed, and `_r` with a stable 6-digit hash of the NAME_TAG_FIELDS
        that differ from their defaults (epochs, rates, weight decay, data, ...): `vgg16_0.5_True_False_tanh` as is."""
        return self._stem() + _tag(self, NAME_TAG_FIELDS, _as_hashed)

    @property
    def legacy_run_name(self) -> str:
        """The name earlier versions gave this recipe, its hash of TAGGED_FIELDS alone (two runs differing in, say,
        weight decay shared it); a run started under it keeps it (RunPaths.of)."""
        return self._stem() + _tag(self, TAGGED_FIELDS, lambda value: value)

    def _stem(self) -> str:
        name = f"{self.arch}_{self.attn_ratio}_{self.use_sb}_{self.use_se}_{self.activation}"
        if self.attention not in ("none", "sb", "se"):  # the reference's flags cannot name it
            name += f"_{self.attention}"
        name = name.replace(":", "-")  # timm:NAME, timm:se: no colon in a file's name
        if self.placement != default_placement(self.arch):
            name += f"_{self.placement}"
        if self.width != 1.0:
            name += f"_w{self.width:g}"
        if self.seed is not None:
            name += f"_seed{self.seed}"
        return name

    @property
    def recipe(self) -> "Recipe":
        """The recipe alone (a TrainConfig's without this process's options)."""
        return Recipe(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Recipe)})

    def model_options(self) -> dict:
        return dict(attention=self.attention, activation=self.activation, ratio=self.attn_ratio,
                    width=self.width, placement=self.placement, lambda_init=self.lambda_init)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[R], values: dict, **overrides: Any) -> R:
        """The fields of `values` (a saved configuration, any other keys ignored), in today's spelling."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**canonical_config(values), **overrides}.items() if k in known})

    def with_seed(self: R, seed: int) -> R:
        """This configuration with another seed, only the seed checked: a suite's runs of one row differ by seed
        alone, and validating each again (its model built on the meta device) costs a suite of many seeds
        minutes."""
        other = copy.copy(self)
        other.seed, other.milestones = seed, list(self.milestones)
        check_fields(other)
        other._check_seed()
        return other

    def validate(self) -> None:
        check_fields(self)
        if self.attention is None:
            if self.use_sb and self.use_se:
                raise ConfigError("use_sb=True and use_se=True: choose one of SB and SE (or neither, for the "
                                  "baseline)")
            self.attention = "sb" if self.use_sb else "se" if self.use_se else "none"
        self.augment = canonical_augment(self.augment)
        check_choices(self)
        self.use_sb, self.use_se = self.attention == "sb", self.attention == "se"
        self._validate_numbers()
        if self.rng == "reference" and (_tag(self, TAGGED_FIELDS, _as_hashed) or self.augment == "airbench"):
            raise ConfigError("rng='reference' draws as the reference implementation trains: its optimiser, "
                              "schedule, loss and augmentation; this recipe changes them (the airbench preset?): "
                              "use --rng sbattn")
        if self.placement == "auto":
            self.placement = default_placement(self.arch)
        self._validate_model_size()

    @property
    def epoch_count(self) -> int:
        """The epochs a run enters: the last of a fractional --epochs in part."""
        return math.ceil(self.epochs)

    def total_steps(self, steps_per_epoch: int) -> int:
        """The optimiser steps of the whole run (airbench's: the epochs times the steps of one, rounded up)."""
        return math.ceil(self.epochs * steps_per_epoch)

    def steps_in_epoch(self, epoch: int, steps_per_epoch: int) -> int:
        """The steps epoch `epoch` (from 0) trains: all of them but in a fractional run's last."""
        return min(steps_per_epoch, self.total_steps(steps_per_epoch) - epoch * steps_per_epoch)

    def _validate_numbers(self) -> None:
        if not _is_finite(self.epochs) or self.epochs < 1:
            fail(self, "epochs", "must be a number >= 1 (a fraction trains the last epoch in part, e.g. 9.9)")
        if isinstance(self.epochs, float) and self.epochs.is_integer():
            self.epochs = int(self.epochs)  # 80, not 80.0, in the run's files
        if self.eval_every < 1:
            fail(self, "eval_every", "must be an integer >= 1")
        for name in ("momentum", "warmup", "label_smoothing"):
            if not (_is_finite(getattr(self, name)) and 0 <= getattr(self, name) < 1):
                fail(self, name, "must be a number >= 0 and below 1")
        for name in ("lr_start", "lr_end", "bn_bias_lr", "lookahead_decay"):
            if not (_is_finite(getattr(self, name)) and 0 < getattr(self, name) <= MAX_MULTIPLIER):
                fail(self, name, f"must be a number > 0 and at most {MAX_MULTIPLIER}")
        if self.lookahead_decay > 1:
            fail(self, "lookahead_decay", "must be at most 1")
        if self.lookahead_every < 0:
            fail(self, "lookahead_every", "must be an integer >= 0 (0: no lookahead)")
        if self.whiten_bias_epochs is not None and self.whiten_bias_epochs < 0:
            fail(self, "whiten_bias_epochs", "must be an integer >= 0, or none (trained throughout)")
        if self.tta not in (0, 1, 2):
            fail(self, "tta", "must be 0 (none), 1 (mirror) or 2 (mirror and translations)")
        if self.batch_size < 2:
            fail(self, "batch_size", "must be an integer >= 2 (BatchNorm needs 2 samples per batch)")
        for name in ("init_lr", "gamma", "weight_decay", "attn_ratio", "width"):
            if not _is_finite(getattr(self, name)):
                fail(self, name, "must be a finite number")
        if not 0 < self.init_lr <= FLOAT32_MAX:
            fail(self, "init_lr", f"must be > 0 and at most {FLOAT32_MAX:.4g} (the optimiser computes in float32)")
        if not 0 < self.gamma <= 1:
            fail(self, "gamma", "must be in (0, 1]")
        if not (all(_is_int(m) and m > 0 for m in self.milestones)
                and all(a < b for a, b in zip(self.milestones, self.milestones[1:]))):
            fail(self, "milestones", "must be positive, strictly increasing integers, e.g. [40,60,80]")
        if not 0 <= self.weight_decay <= FLOAT32_MAX:
            fail(self, "weight_decay", f"must be >= 0 and at most {FLOAT32_MAX:.4g} (the optimiser computes in "
                                       f"float32)")
        for name in ("attn_ratio", "width"):
            if not 0 < getattr(self, name) <= MAX_MULTIPLIER:
                fail(self, name, f"must be > 0 and at most {MAX_MULTIPLIER}")
        self._check_seed()

    def _check_seed(self) -> None:
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            fail(self, "seed", f"must be an integer from 0 to {MAX_SEED} (2**63 - 1)")

    def _validate_model_size(self) -> None:
        """Build the model on the meta device: it costs nothing and catches what only the model can check, and a
        model too large to train."""
        try:
            with torch.device("meta"):
                model = create_model(self.arch, **self.model_options())
        except SbattnError:  # one line already, naming its fix (a missing extra, say)
            raise
        except ValueError as e:
            raise ConfigError(f"{self.arch} with attn_ratio={self.attn_ratio}, width={self.width:g}, "
                              f"placement={self.placement!r}: {e}") from None
        if self.whiten_bias_epochs is not None and not isinstance(getattr(model, "whiten", None), torch.nn.Conv2d):
            fail(self, "whiten_bias_epochs", f"{self.arch} has no whitening layer (--arch airbench has): leave it "
                                             f"unset")
        params = sum(p.numel() for p in model.parameters())
        if params > MAX_PARAMETERS:
            raise ConfigError(f"{self.arch} with attn_ratio={self.attn_ratio}, width={self.width:g}: {params:.3g} "
                              f"parameters, more than the {MAX_PARAMETERS:.0e} sbattn trains (about 12 GB of "
                              f"weights, gradients and momenta); use a smaller --width or --attn_ratio")


# The fields that make two runs the same run; the rest (device, paths, compile, ...) may change on resume.
RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
# The training's fields added with the airbench recipe (optimiser, schedule, loss, ...): earlier versions' names
# told runs apart by these alone.
TAGGED_FIELDS = ("optimizer", "momentum", "schedule", "warmup", "lr_start", "lr_end", "bn_bias_lr",
                 "label_smoothing", "lookahead_every", "lookahead_decay", "whiten_bias_epochs", "drop_last", "tta")
RECIPE_DEFAULTS = {f.name: f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() for f in dataclasses.fields(Recipe)}  # type: ignore[operator]
# What a run's name hashes: all but what its stem shows and how a run is computed or watched (the reference's own
# runs change precision, rng and eval_every without changing their name).
NAME_TAG_FIELDS = tuple(name for name in RECIPE_FIELDS if name not in (
    "arch", "attn_ratio", "use_sb", "use_se", "activation", "attention", "placement", "width", "seed", "precision",
    "rng", "eval_every"))


def _as_hashed(value: Any) -> Any:
    """A value as the name's hash reads it: a number as a float, so that `--epochs 2` and epochs=2 agree."""
    if isinstance(value, list):
        return [_as_hashed(v) for v in value]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _tag(recipe: Recipe, fields: tuple[str, ...], hashed: Callable[[Any], Any]) -> str:
    """'_r' and a stable 6-digit hash of the `fields` of `recipe` that differ from their defaults; '' if none."""
    changed = {name: hashed(getattr(recipe, name)) for name in fields if getattr(recipe, name) != RECIPE_DEFAULTS[name]}
    if not changed:
        return ""
    return f"_r{hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:6]}"


def fail(config: Any, name: str, why: str) -> typing.NoReturn:
    raise ConfigError(f"{name}={shown(getattr(config, name))}: {why}")


def check_fields(config: Any) -> None:
    """Each field of `config` (a Recipe or a subclass) of its declared type: a configuration read from a file may
    hold anything."""
    cls: type = type(config)
    for f in dataclasses.fields(config):
        expected = _type_problem(getattr(config, f.name), _field_types(cls)[f.name])
        if expected:
            fail(config, f.name, f"must be {expected}")


def check_choices(config: Any) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata["choices"]
        if f.name == "arch" and str(config.arch).startswith("timm:"):
            continue  # any of timm's models: checked as the model is built
        if choices is not None and getattr(config, f.name) not in choices():
            fail(config, f.name, f"must be one of {', '.join(choices())}")


def canonical_config(saved: dict) -> dict:
    """A saved configuration in today's spelling: earlier versions had no attention field and called the
    reference's augmentation "seed", and no rng field."""
    saved = dict(saved)
    if saved.get("attention") is None:
        saved["attention"] = "sb" if saved.get("use_sb") else "se" if saved.get("use_se") else "none"
    if isinstance(saved.get("augment"), str):
        saved["augment"] = canonical_augment(saved["augment"])
    saved.setdefault("rng", "sbattn")  # runs saved before --rng existed drew from sbattn's streams
    for name in TAGGED_FIELDS:  # runs saved before the airbench recipe trained as the defaults say
        saved.setdefault(name, RECIPE_DEFAULTS[name])
    return saved


def recipe_differences(saved: dict, recipe: Recipe) -> list[str]:
    """'name X there, Y now' for each recipe field in which a run's saved configuration differs from `recipe`."""
    saved = canonical_config(saved)
    return [f"{name} {saved.get(name)!r} there, {getattr(recipe, name)!r} now"
            for name in RECIPE_FIELDS if saved.get(name) != getattr(recipe, name)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past any float
        return False


@functools.cache
def _field_types(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _type_problem(value: Any, hint: Any) -> str | None:
    """What a field of type `hint` must be, when `value` is not that; None when it is."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        return None if isinstance(value, list) else "a list of integers"
    if hint is bool:
        return None if isinstance(value, bool) else "True or False"
    if hint is int:
        return None if _is_int(value) else "an integer"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    return None if isinstance(value, hint) else f"a {hint.__name__}"
