"""What sbattn writes, it writes safely: never through a link or over a device, a kill at any write followed by
--resume finishes the run with one results.txt line, a full disk or a read-only folder is one line with the last
good state kept, and a killed --overwrite leaves the run whole."""
import errno
import json
import os
import resource
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sbattn
from sbattn.cli import main
from sbattn.errors import UserError
from sbattn.files import atomic_write

sys.path.insert(0, str(Path(__file__).parent))
import _runs  # noqa: E402
from _runs import finished_output, one_line, snapshot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = [*_runs.TINY, "--seed=0"]
NAME = _runs.run_name(*TINY)
FINISHED = (".pth", ".json", ".csv", ".png")


def python(*args: str, fsize: int | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m sbattn ARGS` (or `python -c CODE ARGS`) in a process of its own, its files limited to `fsize`
    bytes when given (Python ignores SIGXFSZ, so a write past it fails with EFBIG, as on a full disk)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize is not None else None
    command = ["-c", code] if code else ["-m", "sbattn"]
    return subprocess.run([sys.executable, *command, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return finished_output(tmp_path_factory.mktemp("finished"), TINY)


def not_regular(kind: str, path: Path, elsewhere: Path) -> None:
    """Make `path` a `kind` that is not a regular file (a link points to `elsewhere`)."""
    if kind == "symlink":
        elsewhere.write_bytes(b"someone else's file\n")
        os.symlink(elsewhere, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()


KINDS = ["symlink", "fifo", "device", "socket"]


# ------------------------------------------------------------------------------ 1, 2: links, devices, FIFOs


@pytest.mark.parametrize("kind", KINDS[:3])
def test_a_lock_that_is_not_a_regular_file_is_refused_and_nothing_written_through_it(tmp_path, capsys, kind):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "victim"
    not_regular(kind, out / f"{NAME}.lock", elsewhere)
    assert main(["train", *TINY, f"--output-dir={out}"]) == 2
    assert f"{NAME}.lock is not a regular file" in one_line(capsys.readouterr().err)
    assert kind != "symlink" or elsewhere.read_bytes() == b"someone else's file\n"
    assert not (out / f"{NAME}.ckpt").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_an_atomic_write_refuses_a_target_that_is_not_a_regular_file(tmp_path, kind):
    """A symbolic link is refused as well: never written through to its target, nor replaced (it is the user's)."""
    target, elsewhere = tmp_path / "run.csv", tmp_path / "victim"
    not_regular(kind, target, elsewhere)
    before = os.lstat(target)
    with pytest.raises(UserError, match=r"run.csv is not a regular file \(it is a"):
        atomic_write(target, lambda f: f.write(b"epoch,loss\n"))
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)  # the same node, not a file put there
    assert set(os.listdir(tmp_path)) == {"run.csv", *(["victim"] if kind == "symlink" else [])}  # nothing left
    assert kind != "symlink" or elsewhere.read_bytes() == b"someone else's file\n"


def test_export_onto_a_device_node_is_refused_and_the_node_kept(finished, tmp_path, capsys):
    node = tmp_path / "null"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    assert main(["export", str(finished / f"{NAME}.pth"), "-o", str(node)]) == 2
    assert f"{node} is not a regular file (it is a device)" in one_line(capsys.readouterr().err)
    assert stat.S_ISCHR(os.lstat(node).st_mode) and os.listdir(tmp_path) == ["null"]


# ------------------------------------------------------------------------- 3, 4: a kill at each write


KILLER = """
import fnmatch, os, signal, sys
event, target, when = sys.argv[1:4]
fired = []

def kill_at(name, args):
    if name == event and not fired and fnmatch.fnmatch(os.fspath(args[1 if name == "os.rename" else 0]), target):
        fired.append(name)
        if when == "after":
            os.rename(args[0], args[1])
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(kill_at)
from sbattn.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize("event, suffix, when", [
    ("os.rename", ".ckpt", "before"),  # the checkpoint's staging folder is left behind
    ("os.rename", ".pth", "before"),
    ("os.rename", ".png", "before"),
    ("os.rename", ".csv", "before"),
    ("os.rename", ".json", "before"),  # the run's JSON, the mark that it finished
    ("os.rename", ".json", "after"),  # the JSON in place, its results.txt line not yet appended
    ("os.remove", ".ckpt", "before"),  # results.txt appended, the checkpoint not yet removed
], ids=["checkpoint", "weights", "png", "csv", "json", "json-in-place", "results.txt"])
def test_a_kill_at_any_write_then_resume_finishes_with_one_results_line(tmp_path, capsys, event, suffix, when):
    """SIGKILL as the write's rename (or the checkpoint's removal) is about to happen, or just after it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.txt").write_text("an earlier run's line\n")
    killed = python(event, str(out / f"{NAME}{suffix}"), when, "train", *TINY, f"--output-dir={out}", code=KILLER)
    assert killed.returncode == -9, killed.stderr
    assert main(["train", *TINY, f"--output-dir={out}", "--resume"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    lines = (out / "results.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == "an earlier run's line" and "] --> acc : " in lines[1]
    assert sorted(os.listdir(out)) == sorted(["results.txt", *(f"{NAME}{s}" for s in FINISHED)])
    assert sbattn.load(out / f"{NAME}.pth").history == json.loads((out / f"{NAME}.json").read_text())["history"]


# ------------------------------------------------------------------------------ 5, 6, 7: no room, no writes


def test_a_file_size_limit_while_checkpointing_is_one_line_not_torchs_error(tmp_path):
    out = tmp_path / "out"
    proc = python("train", *TINY, f"--output-dir={out}", fsize=100_000)  # the checkpoint is ~350 kB
    assert proc.returncode == 1, proc.stderr
    err = one_line(proc.stderr)
    assert f"cannot write {out}/{NAME}.ckpt (File too large)" in err and "make room, then resume with" in err
    assert sorted(os.listdir(out)) == [f"{NAME}.config.json"]  # no half-written file, no lock


def test_torch_save_past_a_size_limit_is_the_write_failure_and_a_writer_bug_is_not(tmp_path):
    code = ("import sys, torch\nfrom sbattn.files import atomic_write\ntry:\n"
            "    atomic_write(sys.argv[1], lambda f: torch.save(torch.zeros(100_000), f))\n"
            "except Exception as e:\n    print(type(e).__name__, getattr(e, 'errno', None))\n")
    proc = python(str(tmp_path / "w.pth"), fsize=50_000, code=code)
    assert proc.stdout.split() == ["OSError", str(errno.EFBIG)], proc.stderr

    def buggy(f):
        torch.save(torch.zeros(1), f)
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # no failed write beneath it: raised as it is
        atomic_write(tmp_path / "w.pth", buggy)
    assert os.listdir(tmp_path) == []


def folder_turns_read_only(monkeypatch, lock: Path) -> None:
    """The run's folder read-only from now on, as far as removing its lock goes (root writes through chmod)."""
    real = os.unlink

    def unlink(path, *args, **kwargs):
        if os.fspath(path) == str(lock):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


def test_a_folder_turned_read_only_mid_run_keeps_the_checkpoints_message(tmp_path, monkeypatch, capsys):
    name = _runs.run_name(*TINY, "--epochs=2")
    import sbattn.train.state as state_module
    out, real, saves = tmp_path / "out", state_module.save_checkpoint, []

    def read_only_after_the_first(path, state):
        saves.append(path)
        if len(saves) > 1:
            folder_turns_read_only(monkeypatch, out / f"{name}.lock")
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real(path, state)

    monkeypatch.setattr(state_module, "save_checkpoint", read_only_after_the_first)
    assert main(["train", *TINY, "--epochs=2", f"--output-dir={out}"]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"cannot write {out}/{name}.ckpt (Read-only file system)" in err and "last good checkpoint" in err


def test_a_lock_that_cannot_be_removed_after_success_is_one_warning(finished, monkeypatch, capsys):
    folder_turns_read_only(monkeypatch, finished / f"{NAME}.lock")
    assert main(["train", *TINY, f"--output-dir={finished}"]) == 0
    assert "warning: cannot remove the lock file" in one_line(capsys.readouterr().err)
    monkeypatch.undo()
    os.unlink(finished / f"{NAME}.lock")


def test_no_room_for_the_lock_is_one_line_and_no_lock_is_left(tmp_path):
    out = tmp_path / "out"
    proc = python("train", *TINY, f"--output-dir={out}", fsize=0)  # not one byte may be written
    assert proc.returncode == 2, proc.stderr
    assert f"cannot write the lock file {out}/{NAME}.lock (File too large)" in one_line(proc.stderr)
    assert os.listdir(out) == []


# ------------------------------------------------------------------------------ 8: a killed --overwrite


def test_a_kill_during_overwrites_move_leaves_the_run_whole(finished, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for s in FINISHED:
        (out / f"{NAME}{s}").write_bytes((finished / f"{NAME}{s}").read_bytes())
    before = snapshot(out)
    # Killed between two renames: the .pth moved into replaced/, the .json not yet.
    killed = python("os.rename", f"{out}/replaced/*/{NAME}.json", "before", "train", *TINY, f"--output-dir={out}",
                    "--overwrite", code=KILLER)
    assert killed.returncode == -9, killed.stderr
    assert not (out / f"{NAME}.pth").exists()  # half moved
    capsys.readouterr()
    assert main(["train", *TINY, f"--output-dir={out}"]) == 0
    said = capsys.readouterr().out
    assert f"put {out}/{NAME}.pth back" in said and "finished earlier" in said
    assert snapshot(out) == before and list((out / "replaced").iterdir()) == []
