"""Standard output and error that outlive their reader.

A run's words go to the terminal (or pipe) while it takes them. Once a stream is closed (`2>&-`) or its reader
has gone (`sbattn train ... | head -1`: EPIPE), they go to the log file the run named (`<run>.log`), and training
carries on: hours of training are worth more than a reader that left, so a lost stream stops the printing, never
the run (Python ignores SIGPIPE, so nothing else would stop it either).
"""
from __future__ import annotations

import errno
import io
import os
import stat
import sys
import warnings
from pathlib import Path
from typing import TextIO

from .errors import SbattnWarning

__all__ = ["install", "log_to", "append_to_log", "interactive"]

_LOST = (errno.EPIPE, errno.EBADF, errno.ECONNRESET)
_fallback: Path | None = None


def log_to(path: str | Path | None) -> None:
    """Where the words of a lost stream go from now on (None: nowhere)."""
    global _fallback
    _fallback = Path(path) if path is not None else None


def _to_fallback(text: str) -> None:
    if _fallback is not None and text:
        append_to_log(_fallback, text)


def append_to_log(path: str | Path, text: str) -> None:
    """Append `text` to the log file `path`, never through a link planted at its name nor into a FIFO or device
    there (opened without waiting for a reader, then left); what cannot be written is dropped (nowhere left to
    write: the exit status still says what happened)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.write(fd, text.encode(errors="replace"))
    except OSError:
        pass
    finally:
        os.close(fd)


class Stream(io.TextIOBase):
    """A standard stream's stand-in: the real stream while it takes writes, then the fallback log."""

    def __init__(self, real: TextIO | None, fd: int) -> None:
        self.real: TextIO | None = real
        self.fd = fd

    def _lose(self) -> None:
        self.real = None
        try:  # what the real stream still buffers drains into /dev/null, not into an error at exit
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.fd)
            os.close(null)
        except OSError:
            pass

    def write(self, text: str) -> int:
        if self.real is not None:
            try:
                self.real.write(text)
                return len(text)
            except UnicodeEncodeError:  # what the stream's encoding lacks (PYTHONIOENCODING=ascii, a name é.jpg)
                encoding = getattr(self.real, "encoding", None) or "ascii"  # is escaped, as stderr does: not lost
                self.write(text.encode(encoding, "backslashreplace").decode(encoding))
                return len(text)
            except (OSError, ValueError) as e:  # ValueError: the stream was closed
                if isinstance(e, OSError) and e.errno not in _LOST:
                    raise
                self._lose()
        _to_fallback(text)
        return len(text)

    def flush(self) -> None:
        if self.real is not None:
            try:
                self.real.flush()
            except (OSError, ValueError) as e:
                if isinstance(e, OSError) and e.errno not in _LOST:
                    raise
                self._lose()

    def isatty(self) -> bool:
        try:
            return self.real is not None and self.real.isatty()
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        return True


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """sbattn's own warnings as one line (Python's form adds the warning's file and its source line)."""
    if issubclass(category, SbattnWarning):
        return f"sbattn: warning: {message}\n"
    return _python_warning(message, category, filename, lineno, line)


_python_warning = warnings.formatwarning


def install() -> None:
    """Put the stand-ins in place of sys.stdout and sys.stderr (once; a closed stream is None in Python). A closed
    standard descriptor is held open on /dev/null, so that no file the run opens can take its number and receive
    what is written to it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    warnings.formatwarning = _one_line_warning
    if not isinstance(sys.stdout, Stream):
        sys.stdout = Stream(sys.stdout, 1)
    if not isinstance(sys.stderr, Stream):
        sys.stderr = Stream(sys.stderr, 2)


def interactive() -> bool:
    """Progress bars are for a terminal: standard error is one."""
    return sys.stderr is not None and sys.stderr.isatty()
