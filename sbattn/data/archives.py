"""Archives (.tar, .tar.gz, .tgz, .zip) read into memory after every entry is checked: no absolute paths,
no '..', no links leading out, no devices, no entry larger than MAX_ENTRY_BYTES unpacked (nor all of them
together larger than MAX_ARCHIVE_BYTES), checked before it is unpacked."""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import IO
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .limits import MAX_ARCHIVE_BYTES, MAX_ENTRY_BYTES, too_large

_MAX_LINK_BYTES = 4096  # a link's target


def _member_path(name: str, archive: Path) -> str:
    """An archive entry's normalised relative path; absolute paths and '..' are refused."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise DataError(f"{archive} has an entry with an absolute path ({name!r}); refusing to use it: "
                        "re-create the archive with relative paths")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"{archive} has an entry that leads out of its folder ({name!r}); refusing to use it: "
                        "re-create the archive without '..' paths")
    return "/".join(parts)


def _link_target(member: str, target: str, archive: Path, hard: bool) -> str:
    """Where a link inside the archive points, as an archive path; a link leading out is refused."""
    raw = target.replace("\\", "/")
    joined = raw if hard else posixpath.join(posixpath.dirname(member), raw)
    resolved = posixpath.normpath(joined)
    if raw.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise DataError(f"{archive}: link {member!r} points outside the archive ({target!r}); refusing to use it: "
                        "re-create the archive without links")
    return resolved


class _Budget:
    """What an archive may unpack: each entry at most MAX_ENTRY_BYTES, all of them at most MAX_ARCHIVE_BYTES."""

    def __init__(self, archive: Path) -> None:
        self.archive, self.left = archive, MAX_ARCHIVE_BYTES

    def read(self, name: str, size: int, open_entry: Callable[[], IO[bytes]], limit: int = MAX_ENTRY_BYTES) -> bytes:
        """An entry's bytes; `size` is what the archive says it unpacks to, checked first, and the reading stops
        past the limit whatever the archive says."""
        if size > limit:
            raise too_large(f"{self.archive}: entry {name!r}", size, limit)
        with open_entry() as f:
            blob = f.read(limit + 1)
        if len(blob) > limit:
            raise too_large(f"{self.archive}: entry {name!r}", len(blob), limit)
        self.left -= len(blob)
        if self.left < 0:
            raise DataError(f"{self.archive} unpacks to more than {MAX_ARCHIVE_BYTES:,} bytes, more than sbattn reads "
                            f"from one archive; refusing it")
        return blob


def _tar_entry(tf: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> IO[bytes]:
    """A regular file's entry, open to read (tarfile gives no file for the other kinds, which are refused)."""
    f = tf.extractfile(member)
    if f is None:
        raise DataError(f"{archive}: entry {member.name!r} is not a regular file; refusing to use the archive")
    return f


@dataclass
class _Archive:
    files: dict[str, bytes]   # regular files (links resolved) by path
    dirs: set[str]            # directory paths, including the parents of every file


def _read_archive(path: Path, want: Callable[[str], bool] = lambda _: True) -> _Archive:
    """Read every wanted regular file of a .tar(.gz) or .zip into memory after checking every entry."""
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    dirs: set[str] = set()
    budget = _Budget(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = _member_path(info.filename, path)
                    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no Unix type
                    if info.is_dir():
                        dirs.add(name)
                    elif kind == stat.S_IFLNK:
                        raw = budget.read(name, info.file_size, lambda: zf.open(info), _MAX_LINK_BYTES)
                        links[name] = _link_target(name, raw.decode("utf-8", "replace"), path, hard=False)
                    elif kind not in (0, stat.S_IFREG):
                        raise DataError(f"{path}: entry {info.filename!r} is a device or other special file; "
                                        "refusing to use the archive")
                    elif want(name):
                        files[name] = budget.read(name, info.file_size, lambda: zf.open(info))
        else:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    name = _member_path(m.name, path)
                    if m.isdir():
                        dirs.add(name)
                    elif m.issym() or m.islnk():
                        links[name] = _link_target(name, m.linkname, path, hard=m.islnk())
                    elif not m.isfile():
                        raise DataError(f"{path}: entry {m.name!r} is a device or other special file; "
                                        "refusing to use the archive")
                    elif want(name):
                        files[name] = budget.read(name, m.size, lambda: _tar_entry(tf, m, path))
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; pass --data-dir with an existing folder or archive") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
                        "download or create it again") from None
    for name, target in links.items():
        for _ in range(32):  # follow chains of links inside the archive
            if target not in links:
                break
            target = links[target]
        if target in files and want(name):
            files[name] = files[target]
        elif target not in dirs and target not in files and want(name):
            raise DataError(f"{path}: link {name!r} points to {target!r}, which the archive does not hold; "
                            "re-create the archive")
    for name in files:
        parts = name.split("/")
        dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))
    return _Archive(files, dirs)
