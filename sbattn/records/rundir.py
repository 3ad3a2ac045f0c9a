"""A run's place in its output directory: one process at a time on it (a lock), a finished run recognised and
left alone, the temporary files of a killed save cleaned up, and the files of an earlier run moved aside when
the user asks for a fresh one."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from .paths import RESULTS, RUN_FILES, RunPaths

__all__ = ["prepare_output_dir", "run_lock", "remove_stale_temporaries", "move_aside"]


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output directory and prove it and its results.txt writable before any training is spent."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror or e}); "
                        f"choose another with --output-dir", code=2) from None
    _check_appendable(out / RESULTS)
    return out


def _check_appendable(path: Path) -> None:
    """A file to append to at the end of the run: absent, or a regular file this process may write."""
    if not os.path.lexists(path):
        return
    if not path.is_file():
        raise UserError(f"{path} is not a regular file, and the run appends its result line to it: move it away",
                        code=2)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise UserError(f"{path} is not writable ({e.strerror or e}), and the run appends its result line to it: "
                        f"make it writable or choose another --output-dir", code=2) from None


@contextlib.contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """Hold <run>.lock while the run trains: a second process on the same run refuses with one line (exit 2)."""
    path = paths.lock
    fd = _acquire(path, paths)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: a process that locks it next sees it gone and retries
        os.close(fd)


def _acquire(path: Path, paths: RunPaths) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the lock file {path} ({e.strerror or e})", code=2) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise UserError(f"another process{f' (pid {holder})' if holder.isdigit() else ''} is training "
                            f"{paths.name} in {paths.output_dir} (it holds {path}); wait for it to finish, or stop "
                            f"it first", code=2) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # its holder removed it between our open and our lock: lock the new one


def remove_stale_temporaries(paths: RunPaths) -> list[Path]:
    """Delete the temporary files (.<name>.<suffix>.*.tmp, as atomic_write names them) that a save killed
    outright left behind; only under the run's lock, so that no save of this run is under way."""
    stale = [Path(p) for suffix in RUN_FILES
             for p in glob.glob(os.path.join(glob.escape(str(paths.output_dir)),
                                             f".{glob.escape(paths.name + suffix)}.*.tmp"))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def move_aside(paths: RunPaths) -> Path | None:
    """Move the run's files into a new folder <output_dir>/replaced/<name>.<time>.*/; returns it, or None when the
    run has no files."""
    present = [paths.with_suffix(s) for s in RUN_FILES if paths.with_suffix(s).exists()]
    if not present:
        return None
    try:
        root = paths.replaced
        root.mkdir(exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{paths.name}.{time.strftime('%Y%m%d-%H%M%S')}.", dir=root))
        for p in present:
            os.rename(p, folder / p.name)
    except OSError as e:
        raise UserError(f"cannot move the earlier files of {paths.name} aside into {paths.replaced} "
                        f"({e.strerror or e}); nothing was trained", code=2) from None
    return folder
