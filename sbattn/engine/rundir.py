"""A run's place in its output directory: one process at a time on it (a lock), a finished run recognised and
left alone, the temporary files of a killed save cleaned up, and the files of an earlier run moved aside when
the user asks for a fresh one."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from .outputs import RunPaths

__all__ = ["RUN_FILES", "read_finished", "run_lock", "remove_stale_temporaries", "move_aside"]

# What a run leaves under its name (the exports made from its weights included), its checkpoint first.
RUN_FILES = (".ckpt", ".pth", ".json", ".csv", ".png", ".onnx", ".pt2")
REPLACED = "replaced"  # the folder in the output directory that the files of replaced runs are moved to


def read_finished(path: str | Path) -> dict | None:
    """The record ({"summary", "history"}) in a finished run's JSON file, or None when `path` holds none (a table,
    an unfinished run, something else)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    summary = data.get("summary") if isinstance(data, dict) else None
    if not (isinstance(summary, dict) and summary.get("complete") is True and isinstance(summary.get("config"), dict)
            and isinstance(data.get("history"), list) and isinstance(summary.get("final_eval_acc"), (int, float))):
        return None
    return data


@contextlib.contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """Hold <run>.lock while the run trains: a second process on the same run refuses with one line (exit 2)."""
    path = paths.with_suffix(".lock")
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
        root = paths.output_dir / REPLACED
        root.mkdir(exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{paths.name}.{time.strftime('%Y%m%d-%H%M%S')}.", dir=root))
        for p in present:
            os.rename(p, folder / p.name)
    except OSError as e:
        raise UserError(f"cannot move the earlier files of {paths.name} aside into {paths.output_dir / REPLACED} "
                        f"({e.strerror or e}); nothing was trained", code=2) from None
    return folder
