"""A run described by a file: `--config FILE`, TrainConfig options as JSON or TOML.

A flat table of options (either spelling, data_dir or data-dir), or a finished run's own JSON, whose
configuration (and its seed, when the run drew one) is taken whole, so that the file reruns that run. The values
are parsed as the command line's (config/options.py), so a file and a flag mean the same thing.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError
from .train_config import TrainConfig

__all__ = ["read_config_file"]

_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def read_config_file(path: str | Path) -> dict:
    """The options a JSON or TOML file sets, by field name, as the file holds them (TOML for a .toml name, else
    JSON); ConfigError when the file cannot be read or names options that do not exist."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    values = _parse_toml(path, text) if path.suffix.lower() == ".toml" else _parse_json(path, text)
    summary = values.get("summary")
    if isinstance(summary, dict) and isinstance(summary.get("config"), dict):  # a finished run's JSON
        values = dict(summary["config"])
        if values.get("seed") is None and summary.get("seed") is not None:
            values["seed"] = summary["seed"]  # the seed the run drew: the file reruns that run
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise ConfigError(f"--config {path}: unknown option(s) {', '.join(unknown)} (the options are those of "
                          f"`sbattn train --help`)")
    return values


def _parse_json(path: Path, text: str) -> dict:
    try:
        values = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e}); a .toml name reads it as TOML") from None
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
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None

