"""Files written so that a crash never leaves a half-written one under the real name."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_write", "atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A path to write `path` at, in a temporary folder beside it; when the block ends without an error, what
    was written there (the file, and companions such as ONNX external data) is synced and renamed into place,
    and the folder synced, so that the rename survives a power cut too.

    An error leaves the previous file intact and nothing behind. The files are created by the writer, so they
    get the permissions the user's umask gives (a file from mkstemp would be readable by its owner alone).
    """
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging / path.name
        companions = [p for p in staging.iterdir() if p.name != path.name]
        for written in (*companions, staging / path.name):  # the named file last: companions are in place first
            _fsync(written, os.O_RDONLY)
            os.replace(written, path.parent / written.name)
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write(path: str | Path, write: Callable) -> None:
    """Call write(file) on a new binary file, then put it in place of `path` (see atomic_path)."""
    with atomic_path(path) as staged:
        with open(staged, "wb") as f:
            write(f)


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:  # a folder cannot be opened on Windows: its rename is as durable as the platform makes it
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
