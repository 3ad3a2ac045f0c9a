"""TrainConfig on the command line: one option per field, and the configuration back from parsed options.

The reference implementation's flags keep their underscore spelling (--batch_size), the project's use hyphens
(--data-dir); either spelling is accepted for every option. Runs started by a suite (`--jobs`) go through the
same form, so a configuration must survive `to_argv` and back.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Sequence

from .config import TrainConfig

__all__ = ["add_config_options", "config_from_args", "config_from_argv", "parse_bool", "parse_int_list"]


TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")
BOOLEAN_WORDS = TRUE_WORDS + FALSE_WORDS


def parse_bool(text: str) -> bool:
    value = str(text).strip().strip("'\"").lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
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


def field_help(f: dataclasses.Field, default=dataclasses.MISSING) -> str:
    """A field's help line: what it does, its choices, and one default."""
    if default is dataclasses.MISSING:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    choices = f.metadata["choices"]
    text = f.metadata["help"] + (f"; one of {', '.join(choices())}" if choices else "")
    return text if default is None else f"{text} (default: {default})"


def add_config_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One option per TrainConfig field, its choices and default shown in --help."""
    hints = typing.get_type_hints(TrainConfig)
    reference_group = parser.add_argument_group("the reference implementation's hyper-parameters")
    own_group = parser.add_argument_group("sbattn's options")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        underscored, hyphenated = f"--{f.name}", f"--{f.name.replace('_', '-')}"
        reference = f.metadata["reference"]
        flags = list(dict.fromkeys([underscored, hyphenated] if reference else [hyphenated, underscored]))
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        group = reference_group if reference else own_group
        group.add_argument(*flags, dest=f.name, default=default, metavar=f.name.upper(), help=field_help(f),
                           **_parser_for(hints[f.name]))


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig(**{**values, **overrides})


def config_from_argv(argv: Sequence[str]) -> TrainConfig:
    """The configuration `sbattn train ARGV` would train."""
    parser = argparse.ArgumentParser(add_help=False)
    add_config_options(parser)
    return config_from_args(parser.parse_args(list(argv)))
