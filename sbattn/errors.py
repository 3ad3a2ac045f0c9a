"""The one error contract: every error a user can fix is an `SbattnError`, printed by the command line as one
line and turned into the exit status it carries. The library raises the subclasses; `sbattn.cli.main` catches
the base class once."""
from __future__ import annotations

from typing import Any

__all__ = ["SbattnError", "ConfigError", "DataError", "CheckpointError", "UserError", "SbattnWarning", "one_line",
           "printable", "clip", "shown"]


class SbattnError(Exception):
    """An error the user can fix; str(e) is one line saying what went wrong and what to do.

    code: the exit status the command line returns; label: how it introduces the message; quiet: True when the
    message was already printed (under torchrun, by another rank), so that the command line prints nothing.
    """

    code = 1
    label = "error"
    quiet = False

    def __init__(self, message: str, code: int | None = None):
        super().__init__(one_line(message))
        if code is not None:
            self.code = code


def one_line(text: object) -> str:
    """`text` as one printable line, whatever the files and errors it quotes hold: white space folded, then
    printable()."""
    return printable(" ".join(str(text).split()))


def printable(text: object) -> str:
    """Text read from a file as a terminal shows it harmlessly: every character a terminal would act on (ESC and the
    rest, carriage returns, bidirectional overrides) written as its Python escape, the rest as it is."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


class SbattnWarning(UserWarning):
    """What sbattn says and goes on (a cache it cannot read or write): one line on the command line."""


class ConfigError(SbattnError, ValueError):
    """A bad configuration value; the message names the field, the value and what is allowed."""

    code = 2


class DataError(SbattnError):
    """Data that cannot be found, read or trusted."""

    label = "data error"


class CheckpointError(SbattnError):
    """A checkpoint or weights file that cannot be used."""

    code = 2


class UserError(SbattnError):
    """Any other error the user can fix: a file in the way, an option that does not fit the run, ..."""


SHOWN_CHARS = 200  # of a value quoted in a one-line error: enough to recognise it, never a file's megabytes


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters, its length said: an error quotes what it refuses, which may be megabytes
    long, and its one line must stay readable."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """repr(value) as an error quotes it: clipped, and a value nested too deeply to repr named by its type."""
    try:
        return clip(repr(value), limit)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"
