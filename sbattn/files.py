"""Files written so that a crash never leaves a half-written one under the real name."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from .errors import UserError

__all__ = ["atomic_write", "atomic_path", "keep_copy", "check_regular", "check_folder", "file_kind", "as_argument"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A path to write `path` at, in a temporary folder beside it; when the block ends without an error, what
    was written there (the file, and companions such as ONNX external data) is synced and renamed into place,
    and the folder synced, so that the rename survives a power cut too.

    An error leaves the previous file intact and nothing behind. The files are created by the writer, so they
    get the permissions the user's umask gives (a file from mkstemp would be readable by its owner alone).
    A target that exists and is not a regular file is refused before the writer runs and again before the rename
    (see check_regular): a rename would put a file in place of a device or a FIFO, or of a link the user made.
    """
    path = Path(path)
    _check_target(path)
    short = path.name.encode()[:100].decode(errors="ignore")  # the folder's name within 255 bytes, for any file's
    staging = Path(tempfile.mkdtemp(prefix=f".{short}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging / path.name
        companions = [p for p in staging.iterdir() if p.name != path.name]
        for written in (*companions, staging / path.name):  # the named file last: companions are in place first
            _fsync(written, os.O_RDONLY)
            _check_target(path.parent / written.name)
            os.replace(written, path.parent / written.name)
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write(path: str | Path, write: Callable[[Any], object]) -> None:
    """Call write(file) on a new binary file, then put it in place of `path` (see atomic_path).

    A write that failed (a full disk, a file-size limit) is raised as its OSError even when the writer reports it
    as an error of its own (torch.save: RuntimeError "unexpected pos"), so that callers handle it as the write
    failure it is; a writer's error with no failed write beneath it is raised as it is: a bug still surfaces.
    """
    with atomic_path(path) as staged:
        with open(staged, "wb") as f:
            recorded = _Recorded(f)
            try:
                write(recorded)
            except Exception as e:
                if recorded.error is None or recorded.error is e:
                    raise
                raise recorded.error from e


def keep_copy(source: str | Path, path: str | Path) -> None:
    """`source`'s contents kept at `path` (put in place as atomic_path does) while `source` is later replaced: a
    hard link, which costs no copy; a file system without links gets a copy."""
    with atomic_path(path) as staged:
        try:
            os.link(source, staged)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            shutil.copyfile(source, staged)


def check_regular(path: str | Path, purpose: str) -> None:
    """Refuse `path` (UserError) when it exists and is not a regular file: sbattn replaces or appends to regular
    files only, never a device, a FIFO or a socket, and never writes through a symbolic link to what it points to
    (nor replaces the link: it is the user's). `purpose` says what sbattn would have done with it."""
    _check_node(path, stat.S_ISREG, "a regular file", purpose)


def check_folder(path: str | Path, purpose: str) -> None:
    """Refuse `path` (UserError) when it exists and is not a folder (a symbolic link to one included: sbattn never
    writes through a link). `purpose` says what sbattn would have done with it."""
    _check_node(path, stat.S_ISDIR, "a folder", purpose)


def _check_node(path: str | Path, is_wanted: Callable[[int], bool], wanted: str, purpose: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not is_wanted(mode):
        raise UserError(f"{path} is not {wanted} (it is {file_kind(mode)}), and {purpose}: move it away or "
                        f"choose another path", code=2)


_KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO",
          stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def file_kind(mode: int) -> str:
    """What a file of stat mode `mode` is, as an error names it: "a FIFO", "a device", "a folder", ..."""
    return "a regular file" if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "not a file")


def _check_target(path: Path) -> None:
    """A folder in the way fails as the rename would (IsADirectoryError: the callers' write failures), before any
    work is spent; any other file that is not a regular one is refused."""
    if os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    check_regular(path, "sbattn writes its files as regular files only")


class _Recorded:
    """A file that remembers the OSError of a write that failed, for writers that report it as their own error."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


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


def as_argument(path: str | Path) -> str:
    """`path` as a command-line argument: a relative path that begins with "-" gets "./" before it, or a parser
    would take it for an option (`--output-dir=-odd` made every printed resume command, and a suite's runs, fail)."""
    text = str(path)
    return f"./{text}" if text.startswith("-") else text
