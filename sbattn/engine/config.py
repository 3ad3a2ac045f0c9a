"""One typed configuration for a training run, validated when built.

The reference implementation's hyper-parameters keep its names and defaults; the project's own options follow.
The command line is generated from these fields (engine/options.py), so a field added here is a flag everywhere.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..data import AUGMENTS, DATASETS, canonical_augment
from ..errors import ConfigError, SbattnError
from ..models import PLACEMENTS, create_model, default_placement, list_models
from ..nn import LAMBDA_INITS, list_activations, list_attention
from .tensorboard_log import INSTALL_HINT, tensorboard_available

__all__ = ["TrainConfig", "resolve_device", "PRECISIONS", "LAYOUTS", "COMPILE_MODES", "TRUE_WORDS", "FALSE_WORDS",
           "canonical_compile", "RECIPE_FIELDS", "canonical_config", "recipe_differences"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}  # memory formats by name
# none: eager; model: torch.compile the model (forward and backward); step: the whole training step compiled
# (forward, backward, the optimiser step and the epoch's sums), its batches augmented a whole epoch at once.
COMPILE_MODES = ("none", "model", "step")
# How booleans are spelled on the command line and in saved configurations; --compile was a boolean before.
TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")

# Limits of what a run can take, checked when the configuration is built rather than after the data has loaded.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # the optimiser takes its rates in float32
MAX_SEED = 2**63 - 1  # a seed plus a rank's and an epoch's offset must fit the generators' 64 bits
MAX_PARAMETERS = 10**9  # 12 GB of weights, gradients and momenta before any activation
MAX_MULTIPLIER = 64  # width and attn_ratio: beyond it every registered model is past MAX_PARAMETERS

# The fields that make two runs the same run; the rest (device, paths, compile, ...) may change on resume.
RECIPE_FIELDS = ("arch", "attention", "attn_ratio", "use_sb", "use_se", "activation", "epochs", "batch_size",
                 "init_lr", "gamma", "milestones", "weight_decay", "placement", "width", "lambda_init", "dataset",
                 "augment", "seed", "eval_every", "precision")


def _opt(default, help: str, reference: bool = False, choices: Callable[[], list[str]] | None = None,
         bare: str | None = None):
    """A config field with its CLI help; reference=True marks the reference implementation's own flags (spelled
    with underscores); choices: the allowed values, from the registry that defines them; bare: the value of the
    option given without one (--compile alone)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "reference": reference, "choices": choices, "bare": bare})


@dataclass
class TrainConfig:
    # The reference implementation's hyper-parameters, with its README's defaults.
    device: str | None = _opt(None, "cuda, cuda:N, cpu or mps; none given: CUDA when present, else the CPU",
                              reference=True)
    attn_ratio: float = _opt(0.5, "hidden size ratio of the attention branch", reference=True)
    use_sb: bool = _opt(True, "Shift-and-Balance attention (the reference's spelling of --attention sb)",
                        reference=True)
    use_se: bool = _opt(False, "Squeeze-and-Excitation attention (the reference's spelling of --attention se; "
                               "not together with use_sb)", reference=True)
    activation: str = _opt("tanh", "SB activation", reference=True, choices=list_activations)
    epochs: int = _opt(80, "training epochs", reference=True)
    batch_size: int = _opt(64, "batch size (the global batch under torchrun)", reference=True)
    init_lr: float = _opt(0.1, "initial learning rate", reference=True)
    gamma: float = _opt(0.2, "learning-rate decay factor at each milestone", reference=True)
    milestones: list[int] = _opt(lambda: [40, 60, 80], "epochs at which the learning rate decays", reference=True)
    weight_decay: float = _opt(9e-6, "weight decay on every parameter", reference=True)
    # The project's own options.
    attention: str | None = _opt(None, "attention block by registered name, or none; given, it sets --use_sb and "
                                       "--use_se; none given: from --use_sb and --use_se",
                                 choices=lambda: ["none", *list_attention()])
    arch: str = _opt("vgg16", "model architecture", choices=list_models)
    placement: str = _opt("auto", "attention at the end of each stage (stage), after each residual block (block) or "
                                  "after each conv layer (layer); auto: the architecture's own (VGG: stage, "
                                  "the reference's; ResNets: block, SE-ResNet's)",
                          choices=lambda: ["auto", *PLACEMENTS])
    width: float = _opt(1.0, "width multiplier for every conv and classifier layer")
    lambda_init: str = _opt("normal", "SB lambda initialisation (normal: the reference's)",
                            choices=lambda: list(LAMBDA_INITS))
    data_dir: str = _opt("./data", "where CIFAR-10 is (any supported form), or will be downloaded to")
    download: bool = _opt(False, "download the official archive into --data-dir if it is not there")
    dataset: str = _opt("cifar10", "dataset (fake: a small synthetic set for smoke runs)",
                        choices=lambda: list(DATASETS))
    cache_dir: str | None = _opt(None, "cache of decoded arrays; none given: $SBATTN_CACHE, else ~/.cache/sbattn")
    resize: bool = _opt(False, "accept image-folder images that are not 32x32 RGB, resizing and converting them")
    augment: str = _opt("reference", "training augmentation (reference: the reference implementation's; "
                                     "seed: the same, its former name)", choices=lambda: list(AUGMENTS))
    output_dir: str = _opt("./results", "where results, figures and checkpoints go")
    seed: int | None = _opt(None, "random seed; also names the run's files so seeds never overwrite each other; "
                                  "none given: a random one, recorded in the run's files")
    eval_every: int = _opt(1, "evaluate every N epochs (the last epoch always)")
    eval_batch_size: int = _opt(1000, "evaluation batch size")
    precision: str = _opt("auto", "auto: bf16 where the device has it, else fp16 on CUDA, else fp32",
                          choices=lambda: list(PRECISIONS))
    layout: str = _opt("auto", "memory layout of training; auto: measured once per machine and model on a CPU "
                               "(cached), channels-last on CUDA", choices=lambda: ["auto", *LAYOUTS])
    compile: str = _opt("none", "torch.compile: model (the flag alone; on CUDA, CUDA graphs for forward and "
                                "backward), or step: the whole training step with the optimiser, each epoch's "
                                "augmentation drawn at once (seeded by seed and epoch); True and False stand for "
                                "model and none",
                        choices=lambda: list(COMPILE_MODES), bare="model")
    sync_bn: bool = _opt(True, "under torchrun, synchronise every BatchNorm (the attention's too) across processes")
    resume: bool = _opt(False, "continue from the run's last checkpoint in --output-dir")
    tensorboard: bool = _opt(False, "write each epoch's scalars (losses, accuracies, learning rate, throughput, SB's "
                                    "|lambda| per block) for TensorBoard under --output-dir/tensorboard/<run>; needs "
                                    f"{INSTALL_HINT}")
    overwrite: bool = _opt(False, "train a finished (or unfinished) run again from the beginning, its earlier files "
                                  "moved aside first into --output-dir/replaced/")

    def __post_init__(self) -> None:
        if isinstance(self.milestones, tuple):
            self.milestones = list(self.milestones)
        self.validate()

    @property
    def run_name(self) -> str:
        """The reference's file stem, vgg16_<ratio>_<use_sb>_<use_se>_<activation>, plus what else tells runs
        apart."""
        name = f"{self.arch}_{self.attn_ratio}_{self.use_sb}_{self.use_se}_{self.activation}"
        if self.attention not in ("none", "sb", "se"):  # the reference's flags cannot name it
            name += f"_{self.attention}"
        if self.placement != default_placement(self.arch):
            name += f"_{self.placement}"
        if self.width != 1.0:
            name += f"_w{self.width:g}"
        if self.seed is not None:
            name += f"_seed{self.seed}"
        return name

    def model_options(self) -> dict:
        return dict(attention=self.attention, activation=self.activation, ratio=self.attn_ratio,
                    width=self.width, placement=self.placement, lambda_init=self.lambda_init)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_argv(self) -> list[str]:
        """`sbattn train` options that rebuild this configuration (unset options left out)."""
        def text(value) -> str:
            return f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)
        return [f"--{name}={text(value)}" for name, value in self.to_dict().items() if value is not None]

    @classmethod
    def from_dict(cls, values: dict, **overrides) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**values, **overrides}.items() if k in known})

    def validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        self.compile = canonical_compile(self.compile)  # a boolean before 0.2
        for f in dataclasses.fields(self):
            expected = _type_problem(getattr(self, f.name), _field_types()[f.name])
            if expected:
                fail(f.name, f"must be {expected}")
        if self.attention is None:
            if self.use_sb and self.use_se:
                raise ConfigError("use_sb=True and use_se=True: choose one of SB and SE (or neither, for the "
                                  "baseline)")
            self.attention = "sb" if self.use_sb else "se" if self.use_se else "none"
        self.augment = canonical_augment(self.augment)
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices is not None and getattr(self, f.name) not in choices():
                fail(f.name, f"must be one of {', '.join(choices())}")
        self.use_sb, self.use_se = self.attention == "sb", self.attention == "se"
        self._validate_numbers(fail)
        if self.overwrite and self.resume:
            raise ConfigError("overwrite=True and resume=True: --overwrite starts the run afresh, --resume continues "
                              "it; choose one")
        if self.placement == "auto":
            self.placement = default_placement(self.arch)
        self._validate_model_size()
        self.device = resolve_device(self.device)
        if self.tensorboard and not tensorboard_available():
            raise ConfigError(f"tensorboard=True: the tensorboard package is not installed; {INSTALL_HINT}")

    def _validate_numbers(self, fail: Callable[[str, str], None]) -> None:
        for name in ("epochs", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                fail(name, "must be an integer >= 1")
        if self.batch_size < 2:
            fail("batch_size", "must be an integer >= 2 (BatchNorm needs 2 samples per batch)")
        for name in ("init_lr", "gamma", "weight_decay", "attn_ratio", "width"):
            if not _is_finite(getattr(self, name)):
                fail(name, "must be a finite number")
        if not 0 < self.init_lr <= FLOAT32_MAX:
            fail("init_lr", f"must be > 0 and at most {FLOAT32_MAX:.4g} (the optimiser computes in float32)")
        if not 0 < self.gamma <= 1:
            fail("gamma", "must be in (0, 1]")
        if not (all(_is_int(m) and m > 0 for m in self.milestones)
                and all(a < b for a, b in zip(self.milestones, self.milestones[1:]))):
            fail("milestones", "must be positive, strictly increasing integers, e.g. [40,60,80]")
        if not 0 <= self.weight_decay <= FLOAT32_MAX:
            fail("weight_decay", f"must be >= 0 and at most {FLOAT32_MAX:.4g} (the optimiser computes in float32)")
        for name in ("attn_ratio", "width"):
            if not 0 < getattr(self, name) <= MAX_MULTIPLIER:
                fail(name, f"must be > 0 and at most {MAX_MULTIPLIER}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            fail("seed", f"must be an integer from 0 to {MAX_SEED} (2**63 - 1)")

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
        params = sum(p.numel() for p in model.parameters())
        if params > MAX_PARAMETERS:
            raise ConfigError(f"{self.arch} with attn_ratio={self.attn_ratio}, width={self.width:g}: {params:.3g} "
                              f"parameters, more than the {MAX_PARAMETERS:.0e} sbattn trains (about 12 GB of "
                              f"weights, gradients and momenta); use a smaller --width or --attn_ratio")


def canonical_config(saved: dict) -> dict:
    """A saved configuration in today's spelling: earlier versions had no attention field and called the
    reference's augmentation "seed"."""
    saved = dict(saved)
    if saved.get("attention") is None:
        saved["attention"] = "sb" if saved.get("use_sb") else "se" if saved.get("use_se") else "none"
    if isinstance(saved.get("augment"), str):
        saved["augment"] = canonical_augment(saved["augment"])
    return saved


def canonical_compile(mode: str | bool) -> str | bool:
    """A --compile value in today's spelling: True and its words are "model", False and its words "none"; any other
    value as is (validation names it)."""
    word = str(mode).strip().lower()
    return "model" if mode is True or word in TRUE_WORDS else "none" if mode is False or word in FALSE_WORDS else mode


def recipe_differences(saved: dict, config: TrainConfig) -> list[str]:
    """'name X there, Y now' for each recipe field in which a run's saved configuration differs from `config`."""
    saved = canonical_config(saved)
    return [f"{name} {saved.get(name)!r} there, {getattr(config, name)!r} now"
            for name in RECIPE_FIELDS if saved.get(name) != getattr(config, name)]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past any float
        return False


@functools.cache
def _field_types() -> dict:
    return typing.get_type_hints(TrainConfig)


def _type_problem(value, hint) -> str | None:
    """What a field of type `hint` must be, when `value` is not that (a configuration read from a file may hold
    anything); None when it is."""
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


def resolve_device(device: str | None) -> str:
    """None or "auto" picks CUDA when present, else the CPU; a device that is not there is a ConfigError."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r}: not a device name; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}: CUDA is not available on this machine; use --device=cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={device!r}: MPS is not available on this machine; use --device=cpu")
    elif parsed.type != "cpu":
        raise ConfigError(f"device={device!r}: unsupported; use cpu, cuda, cuda:N or mps")
    return str(parsed)
