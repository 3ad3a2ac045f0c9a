"""The `sbattn` command line: train, summary, and the commands later modules register.

Training options are generated from TrainConfig's fields: the seed's flags keep their underscore spelling
(--batch_size), the project's use hyphens (--data-dir); either spelling is accepted for every option.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Callable, Sequence

from .config import ConfigError, TrainConfig

__all__ = ["main", "add_config_options", "config_from_args", "parse_bool", "parse_int_list", "UserError"]


class UserError(Exception):
    """An error the user can fix; printed as one line, exit status `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_bool(text: str) -> bool:
    value = str(text).strip().strip("'\"").lower()
    if value in ("true", "1", "yes", "y", "on"):
        return True
    if value in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_int_list(text: str) -> list[int]:
    """'[40,60,80]', '40,60,80' or '40 60 80' -> [40, 60, 80]."""
    body = str(text).strip().strip("'\"").strip("[]()")
    try:
        return [int(part) for part in body.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list of integers like [40,60,80], got {text!r}") from None


def _strip_quotes(text: str) -> str:
    return str(text).strip().strip("'\"")


def _parser_for(hint) -> dict:
    """argparse keywords for a field's type hint."""
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args and hint is not list else hint
    if typing.get_origin(hint) is list or typing.get_origin(base) is list:
        return {"type": parse_int_list}
    if base is bool:
        return {"type": parse_bool, "nargs": "?", "const": True}
    if base in (int, float):
        return {"type": base}
    return {"type": _strip_quotes}


def add_config_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One option per TrainConfig field, its default shown in --help."""
    hints = typing.get_type_hints(TrainConfig)
    seed_group = parser.add_argument_group("the seed's hyper-parameters")
    own_group = parser.add_argument_group("sbattn's options")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        underscored, hyphenated = f"--{f.name}", f"--{f.name.replace('_', '-')}"
        flags = [underscored, hyphenated] if f.metadata["seed"] else [hyphenated, underscored]
        flags = list(dict.fromkeys(flags))
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        group = seed_group if f.metadata["seed"] else own_group
        group.add_argument(*flags, dest=f.name, default=default, metavar=f.name.upper(),
                           help=f"{f.metadata['help']} (default: {default})", **_parser_for(hints[f.name]))


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig(**{**values, **overrides})


def _train(args: argparse.Namespace) -> int:
    from .train import train
    config = config_from_args(args)
    result = train(config)
    return result.exit_code


def _summary(args: argparse.Namespace) -> int:
    from .models import create_model
    from .summary import format_summary, summarize
    kinds = [args.attention] if args.attention else [None, "se", "sb"]
    placement = {"placement": args.placement} if args.placement else {}
    for kind in kinds:
        model = create_model(args.arch, attention=kind, activation=args.activation, ratio=args.attn_ratio,
                             width=args.width, **placement)
        title = (f"== {args.arch} attention={kind or 'none'} placement={getattr(model, 'placement', '-')} "
                 f"width={args.width:g}")
        print(format_summary(summarize(model), title), end="\n\n")
    return 0


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="vgg16", help="model (default: vgg16)")
    p.add_argument("--attention", choices=("none", "sb", "se"), default=None,
                   help="one model; default: baseline, SE and SB")
    p.add_argument("--activation", default="tanh", help="SB activation (default: tanh)")
    p.add_argument("--attn_ratio", "--attn-ratio", type=float, default=0.5, help="branch ratio (default: 0.5)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (default: 1.0)")
    p.add_argument("--placement", choices=("stage", "block", "layer"), default=None,
                   help="(default: the architecture's own: VGG stage, ResNets block)")


def _lazy(module: str, function: str) -> Callable:
    """A function of another sbattn module, imported only when its command runs (keeps --help fast)."""
    def call(*args):
        import importlib
        return getattr(importlib.import_module(f"sbattn.{module}"), function)(*args)
    return call


# name -> (help, add options, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("train one model (the seed's `example.py main`)", add_config_options, _train),
    "compare": ("baseline, SE and SB over seeds: the seed's first table with statistics",
                _lazy("suites", "add_compare_options"), _lazy("suites", "run_compare")),
    "ablate": ("SB with each activation over seeds: the seed's second table with statistics",
               _lazy("suites", "add_ablate_options"), _lazy("suites", "run_ablate")),
    "report": ("rebuild a suite's tables and figures from its finished runs, without training",
               _lazy("suites", "add_report_options"), _lazy("suites", "run_report")),
    "summary": ("layer table, parameters and FLOPs of the models", _add_model_options, _summary),
    "evaluate": ("test accuracy of a trained model (.pth or checkpoint)",
                 _lazy("deploy", "add_evaluate_options"), _lazy("deploy", "run_evaluate")),
    "predict": ("top-k classes with probabilities for image files",
                _lazy("deploy", "add_predict_options"), _lazy("deploy", "run_predict")),
    "export": ("export a trained model to ONNX or a torch.export program",
               _lazy("deploy", "add_export_options"), _lazy("deploy", "run_export")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sbattn", description="Shift-and-Balance attention: train, compare and inspect models.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"sbattn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help, add_options, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_options(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .data import DataError
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"sbattn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"sbattn {args.command}: error: {e}", file=sys.stderr)
        return e.code
    except DataError as e:
        print(f"sbattn {args.command}: data error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sbattn {args.command}: interrupted", file=sys.stderr)
        return 130
