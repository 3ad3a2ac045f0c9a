"""A run's place in its output directory: one process at a time on it (a lock), a finished run recognised and
left alone, the temporary files of a killed save cleaned up, and the files of an earlier run moved aside when
the user asks for a fresh one (all at once: a move that was killed half-way is undone at the next start)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..files import check_regular
from .paths import RESULTS, RUN_FILES, RunPaths

__all__ = ["prepare_output_dir", "run_lock", "remove_stale_temporaries", "move_aside", "undo_interrupted_move"]

MOVING = ".moving"  # the suffix of a folder in replaced/ that --overwrite's move has not finished filling


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output directory and prove it and its results.txt writable before any training is spent."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)  # a new file: never one planted there
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror or e}); "
                        f"choose another with --output-dir", code=2) from None
    _check_appendable(out / RESULTS)
    return out


def _check_appendable(path: Path) -> None:
    """A file to append to at the end of the run: absent, or a regular file this process may write."""
    check_regular(path, "the run appends its result line to it")
    if not os.path.lexists(path):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK))
    except OSError as e:
        raise UserError(f"{path} is not writable ({e.strerror or e}), and the run appends its result line to it: "
                        f"make it writable or choose another --output-dir", code=2) from None


@contextlib.contextmanager
def run_lock(paths: RunPaths, agent: tuple[int, float] | None = None) -> Iterator[None]:
    """Hold <run>.lock while the run trains: a second process on the same run refuses with one line (exit 2).

    agent: (pid, seconds) for a torchrun worker, the agent that started it and within how long it stops once that
    agent has died; written to the lock, so that a process refused while a killed job's worker still holds it says
    so (that it will stop, when), rather than that another process is training."""
    path = paths.lock
    fd = _acquire(path, paths, agent)
    try:
        yield
    except BaseException:
        _release(path, fd, warn=False)  # the run's own error is the one to report
        raise
    _release(path, fd, warn=True)


def _release(path: Path, fd: int, warn: bool) -> None:
    """Remove the lock while still holding it (a process that locks it next sees it gone and retries). A lock left
    behind is harmless, the next run takes it over, so failing to remove it (a folder turned read-only) never
    hides how the run ended: silent after an error, one warning line after success."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if warn:
            print(f"sbattn: warning: cannot remove the lock file {path} ({e.strerror or e}); it is harmless, the "
                  f"next run takes it over", file=sys.stderr)
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int:
    """The lock file, never through a link (a link planted there would have the run truncate what it points to and
    write its pid there), and a regular file: anything else there is refused before it is opened."""
    check_regular(path, "sbattn locks the run with it")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror or e  # one made since the check
        raise UserError(f"cannot create the lock file {path} ({why})", code=2) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped in since the check
        os.close(fd)
        raise UserError(f"{path} is not a regular file, and sbattn locks the run with it: move it away", code=2)
    return fd


def _acquire(path: Path, paths: RunPaths, agent: tuple[int, float] | None) -> int:
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace")
            os.close(fd)
            raise UserError(_held(holder, path, paths), code=2) from None
        try:
            current = os.lstat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n{_AGENT} {agent[0]} {agent[1]:.3f}\n".encode() if agent
                         else f"{os.getpid()}\n".encode())
            except OSError as e:  # no space at all: the lock, empty, is removed; nothing was started
                _release(path, fd, warn=False)
                raise UserError(f"cannot write the lock file {path} ({e.strerror or e}); make room, then run it "
                                f"again", code=2) from None
            return fd
        os.close(fd)  # its holder removed it between our open and our lock: lock the new one


_AGENT = "torchrun-agent"  # the lock's second line, a torchrun worker's: "torchrun-agent <pid> <seconds>"
_HOLDER = re.compile(rf"(\d{{1,10}})\n(?:{_AGENT} (\d{{1,10}}) (\d{{1,9}}(?:\.\d{{1,6}})?)\n)?", re.ASCII)


def _held(content: str, path: Path, paths: RunPaths) -> str:
    """Why the run's lock cannot be taken, from what its holder wrote there: its pid and, a torchrun worker, its
    agent's. A worker whose parent is no longer that agent is a leftover of a killed job, stopping by itself."""
    found = _HOLDER.fullmatch(content.strip() + "\n")
    holder, agent, seconds = found.groups() if found else (None, None, None)
    if holder and agent and seconds and _parent_of(int(holder)) not in (None, int(agent)):
        return (f"pid {holder}, a worker of a torchrun job whose agent (pid {agent}) is gone, still holds {path}: "
                f"a leftover of the killed job, not another training; told of its agent's death, it checkpoints "
                f"{paths.name} at its next step and exits, within {float(seconds):g} s (its --dist-timeout) at "
                f"most: run this again once it has")
    return (f"another process{f' (pid {holder})' if holder else ''} is training {paths.name} in "
            f"{paths.output_dir} (it holds {path}); wait for it to finish, or stop it first")


def _parent_of(pid: int) -> int | None:
    """The parent of process `pid` (Linux's /proc); None when it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def remove_stale_temporaries(paths: RunPaths) -> list[Path]:
    """Delete what a save killed outright left behind: the staging folders of atomic_path (.<name><suffix>.*.tmp,
    with the half-written file inside) and temporary files of that name; only sbattn's own, by that name, in the
    run's folder, and only under the run's lock, so that no save of this run is under way. A link of that name is
    removed itself, never followed."""
    stale = [Path(p) for suffix in RUN_FILES
             for p in glob.glob(os.path.join(glob.escape(str(paths.output_dir)),
                                             f".{glob.escape(paths.name + suffix)}.*.tmp"))]
    for p in stale:
        try:
            shutil.rmtree(p) if stat.S_ISDIR(os.lstat(p).st_mode) else os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise UserError(f"cannot remove {p}, left behind by a save that was killed ({e.strerror or e}): remove "
                            f"it, then run again", code=2) from None
    return stale


def move_aside(paths: RunPaths) -> Path | None:
    """Move the run's files into a new folder <output_dir>/replaced/<name>.<time>.*/; returns it, or None when the
    run has no files. All at once: they are moved into that folder while it is named .<name>.<time>.*.moving, and
    it is renamed once they are all in, so that a move killed half-way is recognised and undone at the next start
    (undo_interrupted_move) instead of leaving a run half in place."""
    present = [paths.with_suffix(s) for s in RUN_FILES if paths.with_suffix(s).exists()]
    if not present:
        return None
    staging = None
    root = paths.replaced
    if root.is_symlink() or (root.exists() and not root.is_dir()):  # never move a run's files out of its folder
        raise UserError(f"{root} is {'a link' if root.is_symlink() else 'not a folder'}: --overwrite moves the earlier "
                        f"files of {paths.name} into a folder of that name; remove it or rename it; nothing was "
                        f"trained", code=2)
    try:
        root.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{paths.name}.{time.strftime('%Y%m%d-%H%M%S')}.", suffix=MOVING,
                                        dir=root))
        for p in present:
            os.rename(p, staging / p.name)
        folder = root / staging.name[1:-len(MOVING)]
        os.rename(staging, folder)
    except OSError as e:
        if staging is not None:
            with contextlib.suppress(OSError):
                _put_back(staging, paths)
        raise UserError(f"cannot move the earlier files of {paths.name} aside into {paths.replaced} "
                        f"({e.strerror or e}); nothing was trained", code=2) from None
    return folder


def undo_interrupted_move(paths: RunPaths) -> list[Path]:
    """Put back the files of an --overwrite move of this run that was killed half-way (its .moving folder in
    replaced/), so that the run is whole again before anything reads it; returns the files put back. A file whose
    place has been taken since stays aside, its folder renamed as a finished move. Only under the run's lock."""
    pattern = re.compile(rf"\.{re.escape(paths.name)}\.\d{{8}}-\d{{6}}\.[a-z0-9_]{{8}}{re.escape(MOVING)}")
    try:
        names = sorted(filter(pattern.fullmatch, os.listdir(paths.replaced)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    restored = []
    for name in names:
        staging = paths.replaced / name
        try:
            if stat.S_ISDIR(os.lstat(staging).st_mode):  # a folder move_aside made, not a link to one
                restored += _put_back(staging, paths)
        except OSError as e:
            raise UserError(f"cannot move the files of {paths.name} back from {staging}, where a move killed "
                            f"half-way left them ({e.strerror or e}): move them back, then run again", code=2) from None
    return restored


def _put_back(staging: Path, paths: RunPaths) -> list[Path]:
    """The run's files in `staging` back in place; the folder removed, or, holding what could not go back, kept."""
    own = {f"{paths.name}{suffix}" for suffix in RUN_FILES}
    back = []
    for name in sorted(os.listdir(staging)):
        target = paths.output_dir / name
        if name in own and not os.path.lexists(target):
            os.rename(staging / name, target)
            back.append(target)
    if os.listdir(staging):
        os.rename(staging, staging.with_name(staging.name[1:-len(MOVING)]))
    else:
        os.rmdir(staging)
    return back
