"""`sbattn train` (the reference implementation's `example.py main`) and `sbattn summary`."""
from __future__ import annotations

import argparse

from ..config import TrainConfig
from ..errors import ConfigError
from .options import add_config_options, config_from_args, field_help
from ..models import create_model, format_summary, summarize
from ..train import train

__all__ = ["add_train_options", "run_train", "add_summary_options", "run_summary"]

add_train_options = add_config_options


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    defaults = getattr(args, "entry_defaults", {})
    if defaults and all(getattr(config, name) == value for name, value in defaults.items()):
        flags = " ".join(f"--{name}={value}" for name, value in defaults.items())
        print(f"the reference's arithmetic ({flags}: fp32, its random draws, Pillow's augmentation one image at a "
              f"time); the fast path: --precision=auto --rng=sbattn", flush=True)
    return train(config).exit_code


def add_summary_options(p: argparse.ArgumentParser) -> None:
    fields = TrainConfig.__dataclass_fields__
    for name in ("arch", "activation", "attn_ratio", "width"):
        f = fields[name]
        p.add_argument(*dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"]), default=f.default,
                       help=field_help(f), type=type(f.default), metavar=name.upper())
    kinds = fields["attention"].metadata["choices"]()
    p.add_argument("--attention", default=None, metavar="ATTENTION",
                   help=f"attention block by registered name, or none; one of {', '.join(kinds)}; none given: "
                        f"baseline, SE and SB")
    p.add_argument("--placement", default=None, metavar="PLACEMENT",
                   help=field_help(fields["placement"], default=None))
    p.add_argument("--img-size", "--img_size", type=int, default=32, metavar="PIXELS",
                   help="side of the square RGB images the counts are for (default: 32, CIFAR-10's; a timm network's "
                        "own is often 224)")


def run_summary(args: argparse.Namespace) -> int:
    if args.img_size < 1:
        raise ConfigError(f"--img-size {args.img_size}: must be a number of pixels, at least 1")
    kinds = [args.attention] if args.attention else ["none", "se", "sb"]
    for kind in kinds:
        config = TrainConfig(arch=args.arch, attention=kind, activation=args.activation, attn_ratio=args.attn_ratio,
                             width=args.width, placement=args.placement or "auto", device="cpu")
        model = create_model(config.arch, **config.model_options())
        title = (f"== {args.arch} attention={kind} placement={getattr(model, 'placement', '-')} "
                 f"width={args.width:g}")
        try:
            summary = summarize(model, (3, args.img_size, args.img_size))
        except RuntimeError as e:  # a network whose pooling leaves nothing of so small an image
            raise ConfigError(f"--img-size {args.img_size}: {args.arch} cannot take {args.img_size}x{args.img_size} "
                              f"images ({str(e).splitlines()[0]})") from None
        print(format_summary(summary, title), end="\n\n")
    return 0
