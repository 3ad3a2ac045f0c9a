"""The cache of decoded arrays: one .npz per source, holding the stamp (the source's identity) it was decoded
from, so that a changed source is decoded again."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import SbattnWarning, UserError
from ..files import atomic_write
from .dataset import CIFAR10, _validate
from .limits import check_regular

CACHE_VERSION = 1                               # bump when the cache format or decoding changes
_SETTLE_S = 2.0                                 # files modified more recently are not cached yet


def _stat_stamp(paths: list[Path], base: Path) -> tuple[str, bool]:
    """Identity of files by relative path, size and times; and whether all are older than _SETTLE_S."""
    h = hashlib.sha256()
    newest = 0
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            h.update(f"{p.relative_to(base)}\0missing\n".encode(errors="surrogateescape"))  # any file name
            continue
        line = f"{p.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n"
        h.update(line.encode(errors="surrogateescape"))
        newest = max(newest, st.st_mtime_ns)
    # A file rewritten within one timestamp tick of being stamped would keep its stamp (git's "racy clean"
    # problem), so sources modified in the last seconds are decoded but not cached.
    return h.hexdigest(), newest < time.time_ns() - int(_SETTLE_S * 1e9)


def _regular(f: BinaryIO, path: Path) -> BinaryIO:
    """`f`, opened from `path`, when it is a regular file; a FIFO or a device there is a DataError (a miss)."""
    check_regular(path, os.fstat(f.fileno()).st_mode)
    return f


class _Cache:
    """One .npz per source, named after the source, holding the stamp it was decoded from."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.root / f"cifar10-{digest}.npz"

    def get(self, key: dict, stamp: str) -> CIFAR10 | None:
        path = self._file(key)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not wait for a writer
            with os.fdopen(fd, "rb") as f, np.load(_regular(f, path), allow_pickle=False) as z:
                if str(z["stamp"]) != stamp:
                    return None
                data = CIFAR10(
                    z["train_images"], z["train_labels"], z["test_images"], z["test_labels"],
                    [str(c) for c in z["classes"]], f"{z['source']} (cached in {path})",
                )
            _validate(data)
            return data
        except FileNotFoundError:
            return None
        except Exception as e:  # a damaged cache is only a miss; the new file replaces it
            warnings.warn(f"ignoring unreadable cache file {path} ({type(e).__name__}: {e})", SbattnWarning,
                          stacklevel=3)
            return None

    def put(self, key: dict, stamp: str, data: CIFAR10) -> None:
        path = self._file(key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: np.savez(
                f, train_images=data.train_images, train_labels=data.train_labels,
                test_images=data.test_images, test_labels=data.test_labels,
                classes=np.array(data.classes), source=np.array(data.source), stamp=np.array(stamp),
            ))
        except (OSError, UserError) as e:  # a full disk, or a FIFO where the file goes: only a miss next time
            warnings.warn(f"could not write the cache {path} ({e}); the data will be decoded again next time",
                          SbattnWarning, stacklevel=3)
