"""The atomic writer: the file appears whole or not at all, with the umask's permissions, and its rename is synced."""
import errno
import os
import stat

import pytest

from sbattn.files import atomic_path, atomic_write


@pytest.fixture
def umask():
    """Set the process umask for one test, restored after it."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_get_the_permissions_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "new.json", lambda f: f.write(b"{}"))
    old = tmp_path / "old.json"
    old.write_bytes(b"")
    old.chmod(0o600)
    atomic_write(old, lambda f: f.write(b"{}"))  # a file replaced gets them too
    for path in (tmp_path / "new.json", old):
        assert stat.S_IMODE(path.stat().st_mode) == mode, oct(path.stat().st_mode)


def test_the_folder_is_synced_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(st.st_mode) else "fsync-file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "run.pth"
    atomic_write(target, lambda f: f.write(b"weights"))
    assert events[-2:] == [("replace", str(target)), ("fsync-dir", tmp_path.stat().st_ino)]
    assert ("fsync-file", target.stat().st_ino) in events[:-2]  # the data is on disk before the rename
    assert target.read_bytes() == b"weights" and os.listdir(tmp_path) == ["run.pth"]


def test_a_failed_write_keeps_the_earlier_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "run.json"
    target.write_bytes(b"earlier")

    def full_disk(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, full_disk)
    assert target.read_bytes() == b"earlier" and os.listdir(tmp_path) == ["run.json"]


def test_companion_files_move_in_with_the_file(tmp_path):
    with atomic_path(tmp_path / "model.onnx") as staged:
        assert staged.parent != tmp_path and staged.name == "model.onnx"
        staged.write_bytes(b"graph")
        (staged.parent / "model.onnx.data").write_bytes(b"weights")
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.data"]


def test_a_folder_named_like_an_option_is_passed_as_a_path(tmp_path, monkeypatch):
    """`--output-dir=-odd`: the resume command (and a suite's runs, started the same way) must parse."""
    import shlex
    from sbattn.cli import build_parser
    from sbattn.config import TrainConfig
    from sbattn.files import as_argument
    from sbattn.records import RunPaths
    from sbattn.train.state import resume_command
    assert (as_argument("-odd/a.json"), as_argument("odd/-a"), as_argument("/-x")) == ("./-odd/a.json", "odd/-a", "/-x")
    monkeypatch.chdir(tmp_path)
    command = resume_command(RunPaths.of(TrainConfig(output_dir="-odd", dataset="fake", device="cpu")))
    args = build_parser().parse_args(shlex.split(command)[shlex.split(command).index("train"):])
    assert args.config == f"./-odd/{TrainConfig(dataset='fake').run_name}.config.json" and args.resume


@pytest.mark.parametrize("name", ["m" * 250 + ".onnx", "é" * 125 + ".pt"])  # 255 and 254 bytes: legal names
def test_a_file_whose_name_is_near_the_limit_is_written(tmp_path, name):
    from sbattn.files import atomic_write
    atomic_write(tmp_path / name, lambda f: f.write(b"x"))
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_bytes() == b"x"
