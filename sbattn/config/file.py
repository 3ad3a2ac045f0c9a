"""A run described by a file: `--config FILE`, TrainConfig options as JSON or TOML.

A flat table of options (either spelling, data_dir or data-dir), or a finished run's own JSON, whose
configuration (and its seed, when the run drew one) is taken whole, so that the file reruns that run. The values
are parsed as the command line's (cli/options.py), so a file and a flag mean the same thing.

Only a regular file of at most MAX_CONFIG_BYTES is read (a FIFO would wait for a writer forever, /dev/zero never
ends), or standard input when it is named (- or /dev/stdin), as JSON and as bounded. An option set twice is refused
in JSON as TOML refuses it, rather than the last one silently winning.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import stat
import sys
from pathlib import Path

from ..data.limits import read_regular
from ..errors import ConfigError, DataError
from ..files import file_kind
from .recipe import clip, shown
from .train_config import TrainConfig

__all__ = ["read_config_file", "MAX_CONFIG_BYTES", "STDIN_NAMES"]

_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
MAX_CONFIG_BYTES = 2**20  # a run's options are a few hundred bytes, a finished run's JSON a few dozen KB
STDIN_NAMES = ("-", "/dev/stdin")


def read_config_file(path: str | Path) -> dict:
    """The options a JSON or TOML file sets, by field name, as the file holds them (TOML for a .toml name, else
    JSON); ConfigError when the file cannot be read or names options that do not exist."""
    path = Path(path)
    text = _read_text(path)
    values = _parse_toml(path, text) if path.suffix.lower() == ".toml" else _parse_json(path, text)
    summary = values.get("summary")
    if isinstance(summary, dict) and isinstance(summary.get("config"), dict):  # a finished run's JSON
        values = dict(summary["config"])
        if values.get("seed") is None and summary.get("seed") is not None:
            values["seed"] = summary["seed"]  # the seed the run drew: the file reruns that run
    named = {str(k).replace("-", "_"): v for k, v in values.items()}
    if len(named) < len(values):  # data_dir and data-dir: which one was meant?
        spelled = collections.Counter(str(k).replace("-", "_") for k in values)
        twice = sorted(name for name, count in spelled.items() if count > 1)
        raise ConfigError(f"--config {path}: {clip(', '.join(twice))} set twice, in both spellings: set each once")
    unknown = sorted(set(named) - _FIELDS)
    if unknown:
        raise ConfigError(f"--config {path}: unknown option(s) {clip(', '.join(unknown))} (the options are those "
                          f"of `sbattn train --help`)")
    return named


def _read_text(path: Path) -> str:
    """The text of --config's file, refused unless it is a regular file (or standard input, named) of at most
    MAX_CONFIG_BYTES."""
    try:
        if str(path) in STDIN_NAMES:
            if sys.stdin is None:  # started with its standard input closed
                raise ConfigError(f"--config {path}: standard input is closed: give a file, or pipe the JSON in")
            blob = sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1)
            if len(blob) > MAX_CONFIG_BYTES:
                raise ConfigError(f"--config {path}: standard input holds more than the {MAX_CONFIG_BYTES:,} bytes "
                                  f"sbattn reads for a configuration")
        else:
            mode = os.stat(path).st_mode  # worded here for --config; read_regular checks it again as it opens
            if not stat.S_ISREG(mode):
                raise ConfigError(f"--config {path}: {file_kind(mode)}, not a regular file: give a file, or - to read standard "
                                  f"input")
            blob = read_regular(path, MAX_CONFIG_BYTES, "--config")
        return blob.decode()
    except ConfigError:
        raise
    except DataError as e:  # larger than MAX_CONFIG_BYTES
        raise ConfigError(str(e)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text ({e})") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise ConfigError(f"--config {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None


class _Duplicate(Exception):
    """A key a JSON object holds twice (json.loads keeps the last); raised from inside the parser."""


def _unique(pairs: list) -> dict:
    values = {}
    for key, value in pairs:
        if key in values:
            raise _Duplicate(key)
        values[key] = value
    return values


def _parse_json(path: Path, text: str) -> dict:
    try:
        values = json.loads(text, object_pairs_hook=_unique)
    except _Duplicate as e:
        raise ConfigError(f"--config {path}: {shown(e.args[0])} is set twice (JSON would keep the last silently): "
                          f"set it once") from None
    except RecursionError:
        raise ConfigError(f"--config {path}: nested too deeply to be a file of options") from None
    except ValueError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({clip(str(e))}); a .toml name reads it as TOML") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of options, found {type(values).__name__}")
    return values


def _parse_toml(path: Path, text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ConfigError(f"--config {path}: TOML needs Python 3.11 or later; give the options as JSON") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({clip(str(e))})") from None
    except RecursionError:
        raise ConfigError(f"--config {path}: nested too deeply to be a file of options") from None

