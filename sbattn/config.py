"""One typed configuration for a training run, validated when built.

The seed's hyper-parameters keep the seed's names and defaults; the project's own options follow. The CLI is
generated from these fields, so a field added here is a flag everywhere.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import torch

from .attention import ACTIVATIONS
from .augment import AUGMENTS

__all__ = ["ConfigError", "TrainConfig", "resolve_device", "PRECISIONS", "AUGMENTS", "DATASETS"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DATASETS = ("cifar10", "fake")
PLACEMENTS = ("auto", "stage", "block", "layer")


class ConfigError(ValueError):
    """A bad configuration value; str(e) is one line naming the field, the value and what is allowed."""


def _opt(default, help: str, seed: bool = False, **extra):
    """A config field with its CLI help; seed=True marks the seed's own flags (spelled with underscores)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "seed": seed, **extra})


@dataclass
class TrainConfig:
    # The seed's hyper-parameters, with the seed README's defaults.
    device: str | None = _opt(None, "cuda, cuda:N, cpu or mps; default: CUDA when present, else the CPU", seed=True)
    attn_ratio: float = _opt(0.5, "hidden size ratio of the SB or SE branch", seed=True)
    use_sb: bool = _opt(True, "Shift-and-Balance attention", seed=True)
    use_se: bool = _opt(False, "Squeeze-and-Excitation attention (not together with use_sb)", seed=True)
    activation: str = _opt("tanh", f"SB activation: {', '.join(ACTIVATIONS)}", seed=True)
    epochs: int = _opt(80, "training epochs", seed=True)
    batch_size: int = _opt(64, "batch size (the global batch under torchrun)", seed=True)
    init_lr: float = _opt(0.1, "initial learning rate", seed=True)
    gamma: float = _opt(0.2, "learning-rate decay factor at each milestone", seed=True)
    milestones: list[int] = _opt(lambda: [40, 60, 80], "epochs at which the learning rate decays", seed=True)
    weight_decay: float = _opt(9e-6, "weight decay on every parameter", seed=True)
    # The project's own options.
    arch: str = _opt("vgg16", "model architecture")
    placement: str = _opt("auto", "attention at the end of each stage (stage), after each residual block (block) or "
                                  "after each conv layer (layer); auto: the architecture's own (VGG: stage, "
                                  "the seed's; ResNets: block, SE-ResNet's)")
    width: float = _opt(1.0, "width multiplier for every conv and classifier layer")
    lambda_init: str = _opt("normal", "SB lambda initialisation: normal (the seed's), zeros, ones")
    data_dir: str = _opt("./data", "where CIFAR-10 is (any supported form), or will be downloaded to")
    download: bool = _opt(False, "download the official archive into --data-dir if it is not there")
    dataset: str = _opt("cifar10", f"dataset: {', '.join(DATASETS)} (fake: a small synthetic set for smoke runs)")
    cache_dir: str | None = _opt(None, "cache of decoded arrays (default $SBATTN_CACHE or ~/.cache/sbattn)")
    resize: bool = _opt(False, "accept image-folder images that are not 32x32 RGB, resizing and converting them")
    augment: str = _opt("seed", f"training augmentation: {', '.join(AUGMENTS)}")
    output_dir: str = _opt("./results", "where results, figures and checkpoints go")
    seed: int | None = _opt(None, "random seed; also names the run's files so seeds never overwrite each other")
    eval_every: int = _opt(1, "evaluate every N epochs (the last epoch always)")
    eval_batch_size: int = _opt(1000, "evaluation batch size")
    precision: str = _opt("auto", f"{', '.join(PRECISIONS)}; auto: bf16 where the device has it, else fp16 on CUDA, "
                                  f"else fp32")
    compile: bool = _opt(False, "torch.compile the model (on CUDA: CUDA graphs for forward and backward)")
    sync_bn: bool = _opt(True, "under torchrun, synchronise every BatchNorm (the attention's too) across processes")
    resume: bool = _opt(False, "continue from the run's last checkpoint in --output-dir")

    def __post_init__(self) -> None:
        self.milestones = list(self.milestones)
        self.validate()

    @property
    def attention(self) -> str | None:
        return "sb" if self.use_sb else "se" if self.use_se else None

    @property
    def run_name(self) -> str:
        """The seed's file stem, vgg16_<ratio>_<use_sb>_<use_se>_<activation>, plus what else tells runs apart."""
        name = f"{self.arch}_{self.attn_ratio}_{self.use_sb}_{self.use_se}_{self.activation}"
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

        if self.use_sb and self.use_se:
            raise ConfigError("use_sb=True and use_se=True: choose one of SB and SE (or neither, for the baseline)")
        if self.activation not in ACTIVATIONS:
            fail("activation", f"must be one of {', '.join(ACTIVATIONS)}")
        for name in ("epochs", "eval_every", "eval_batch_size"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "must be an integer >= 1")
        if not _is_int(self.batch_size) or self.batch_size < 2:
            fail("batch_size", "must be an integer >= 2 (BatchNorm needs 2 samples per batch)")
        if not self.init_lr > 0:
            fail("init_lr", "must be > 0")
        if not 0 < self.gamma <= 1:
            fail("gamma", "must be in (0, 1]")
        if not (all(_is_int(m) and m > 0 for m in self.milestones)
                and all(a < b for a, b in zip(self.milestones, self.milestones[1:]))):
            fail("milestones", "must be positive, strictly increasing integers, e.g. [40,60,80]")
        if not self.weight_decay >= 0:
            fail("weight_decay", "must be >= 0")
        if not self.width > 0:
            fail("width", "must be > 0")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            fail("seed", "must be a non-negative integer")
        for name, allowed in (("precision", PRECISIONS), ("augment", AUGMENTS), ("dataset", DATASETS),
                              ("placement", PLACEMENTS), ("lambda_init", ("normal", "zeros", "ones"))):
            if getattr(self, name) not in allowed:
                fail(name, f"must be one of {', '.join(allowed)}")
        from .models import MODELS, create_model
        if self.arch not in MODELS:
            fail("arch", f"must be one of {', '.join(sorted(MODELS))}")
        if self.placement == "auto":
            self.placement = default_placement(self.arch)
        try:  # building on the meta device costs nothing and catches what only the model can check
            with torch.device("meta"):
                create_model(self.arch, **self.model_options())
        except ValueError as e:
            raise ConfigError(f"{self.arch} with attn_ratio={self.attn_ratio}, width={self.width:g}, "
                              f"placement={self.placement!r}: {e}") from None
        self.device = resolve_device(self.device)


def default_placement(arch: str) -> str:
    """The placement an architecture's builder uses when given none."""
    from .models import MODELS
    return inspect.signature(MODELS[arch]).parameters["placement"].default


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
