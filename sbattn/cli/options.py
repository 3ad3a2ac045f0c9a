"""TrainConfig on the command line: one option per field, and the configuration back from parsed options.

The reference implementation's flags keep their underscore spelling (--batch_size), the project's use hyphens
(--data-dir); either spelling is accepted for every option.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Sequence

from ..config.file import read_config_file
from ..config.presets import PRESET_ALIASES, PRESETS, preset_help, preset_options
from ..config.recipe import clip, shown
from ..config.train_config import FALSE_WORDS, TRUE_WORDS, TrainConfig, field_default
from ..errors import ConfigError

__all__ = ["add_config_options", "config_from_args", "file_options", "given_options", "parse_bool",
           "parse_int_list", "parse_value", "field_help", "BOOLEAN_WORDS"]


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
    body = str(text).strip().strip("'\"")
    if body and body[0] in "[(" and body[-1] in "])":
        body = body[1:-1]  # one pair of brackets: [[1]] is a list of lists, not [1]
    try:
        if any(c in body for c in "[]()"):
            raise ValueError(body)
        return [int(part) for part in body.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list of integers like [40,60,80], got {text!r}") from None


def _strip_quotes(text: str) -> str:
    return str(text).strip().strip("'\"")


def _parser_for(hint: Any) -> dict[str, Any]:
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


def field_help(f: dataclasses.Field[Any], default: Any = dataclasses.MISSING) -> str:
    """A field's help line: what it does, its choices, and one default."""
    if default is dataclasses.MISSING:
        default = field_default(f)
    choices = f.metadata["choices"]
    text = f.metadata["help"] + (f"; one of {', '.join(choices())}" if choices else "")
    return text if default is None else f"{text} (default: {default})"


def parse_value(name: str, text: str) -> Any:
    """A TrainConfig field's value from its text, as its command-line option parses it."""
    return _parser_for(typing.get_type_hints(TrainConfig)[name])["type"](text)


CONFIG_HELP = ("a JSON or TOML file of these options (a finished run's JSON reruns that run, its seed included); "
               "options given on the command line win over it; TOML for a .toml name; - reads JSON from standard input")


def add_config_options(parser: argparse.ArgumentParser, skip: Sequence[str] = (),
                       config_help: str = CONFIG_HELP) -> None:
    """One option per TrainConfig field, its choices and default shown in --help, and --config FILE.

    An option not given is absent from the parsed namespace (its default is the field's), so that a file or a
    preset can tell which options the user chose.
    """
    hints = typing.get_type_hints(TrainConfig)
    reference_group = parser.add_argument_group("the reference implementation's hyper-parameters")
    own_group = parser.add_argument_group("sbattn's options")
    own_group.add_argument("--config", default=None, metavar="FILE", help=config_help)
    own_group.add_argument("--preset", choices=(*PRESETS, *PRESET_ALIASES), default=None, metavar="PRESET",
                           help=preset_help())
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        underscored, hyphenated = f"--{f.name}", f"--{f.name.replace('_', '-')}"
        reference = f.metadata["reference"]
        flags = list(dict.fromkeys([underscored, hyphenated] if reference else [hyphenated, underscored]))
        group = reference_group if reference else own_group
        bare = {} if f.metadata["bare"] is None else {"nargs": "?", "const": f.metadata["bare"]}
        group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(),
                           help=field_help(f), **_parser_for(hints[f.name]), **bare)


def given_options(args: argparse.Namespace) -> dict:
    """The TrainConfig options given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def file_options(path: str) -> dict:
    """The options --config's file sets, each parsed as its command-line option would be."""
    return {name: _file_value(path, name, value) for name, value in read_config_file(path).items()}


def _file_value(path: str, name: str, value: Any) -> Any:
    if value is None:  # an unset option stays unset
        return None
    hint = typing.get_type_hints(TrainConfig)[name]
    if isinstance(value, str) and str in (hint, *typing.get_args(hint)):
        return value  # as written: a file's strings need no quoting, so none is stripped
    takes_list = typing.get_origin(hint) is list
    where = f"--config {path}: {name} = {shown(value)}"
    if isinstance(value, dict) or (isinstance(value, list) and not takes_list):
        raise ConfigError(f"{where}: expected a single value")
    try:
        return parse_value(name, value if isinstance(value, str) else json.dumps(value))
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ConfigError(f"{where}: {clip(str(e))}") from None
    except (TypeError, RecursionError):  # json.dumps of a TOML date or time, or of lists nested past the stack
        raise ConfigError(f"{where}: expected a number, a string, True or False, or a list of integers (a TOML "
                          f"date or time is none of them)") from None


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """The configuration: the fields' defaults, then the entry point's (`args.entry_defaults`: example.py's),
    then --preset's, then --config's file, then the options given."""
    from_file = file_options(args.config) if getattr(args, "config", None) else {}
    return TrainConfig(**{**getattr(args, "entry_defaults", {}), **preset_options(getattr(args, "preset", None)),
                          **from_file, **given_options(args), **overrides})
