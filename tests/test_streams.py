"""A run whose standard output or error is lost (a pipe whose reader has gone, a closed stream) trains on, loses
no epoch, and writes its words to the run's log file instead."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from _runs import run_name  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TINY = ["--device=cpu", "--dataset=fake", "--width=0.0625", "--batch_size=32", "--precision=fp32",
        "--eval-batch-size=256", "--layout=contiguous", "--seed=0"]


def sbattn(*args: str) -> list[str]:
    return [sys.executable, "-m", "sbattn", *args]


def close_fd(fd: int):
    return lambda: os.close(fd)


def test_a_reader_that_goes_away_costs_no_epoch_and_no_traceback(tmp_path):
    """`sbattn train ... | head -1`: the run finishes all its epochs, exit 0, its later lines in <run>.log."""
    name = run_name(*TINY, "--epochs=2", "--milestones=[1]")
    out = tmp_path / "out"
    proc = subprocess.Popen(sbattn("train", *TINY, "--epochs=2", "--milestones=[1]", f"--output-dir={out}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=tmp_path)
    first = proc.stdout.readline()
    proc.stdout.close()  # what head -1 does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=240) == 0, err
    assert first and "Traceback" not in err and "BrokenPipe" not in err
    record = json.loads((out / f"{name}.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert "final test accuracy" in (out / f"{name}.log").read_text()  # what the reader missed


def test_closed_streams_train_and_the_run_log_holds_its_words(tmp_path):
    """`sbattn train ... >&- 2>&-`: trains, exit 0; what it would have printed is in <run>.log."""
    name = run_name(*TINY, "--epochs=1", "--milestones=[1]")
    out = tmp_path / "out"
    proc = subprocess.run(sbattn("train", *TINY, "--epochs=1", "--milestones=[1]", f"--output-dir={out}"),
                          stdin=subprocess.DEVNULL, env=ENV, cwd=tmp_path, timeout=240,
                          preexec_fn=lambda: (os.close(1), os.close(2)))
    assert proc.returncode == 0
    assert (out / f"{name}.json").is_file()
    log = (out / f"{name}.log").read_text()
    assert "epoch   1/1" in log and "final test accuracy" in log


def test_with_stderr_closed_an_error_goes_to_the_run_log(tmp_path):
    """`2>&-` and a refusal: the one-line error, which has no stderr to go to, is in <run>.log; the exit status
    says it failed."""
    name = run_name(*TINY, "--epochs=1", "--milestones=[1]")
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{name}.ckpt").write_bytes(b"an unfinished run's checkpoint")
    proc = subprocess.run(sbattn("train", *TINY, "--epochs=1", "--milestones=[1]", f"--output-dir={out}"),
                          stdout=subprocess.PIPE, env=ENV, cwd=tmp_path, timeout=240, preexec_fn=close_fd(2))
    assert proc.returncode == 2
    log = (out / f"{name}.log").read_text()
    assert "sbattn train: error:" in log and "holds an unfinished run" in log and "Traceback" not in log


def test_an_epoch_is_checkpointed_before_it_is_reported(tmp_path, monkeypatch):
    """Whatever fails while an epoch is reported, the epoch is in the checkpoint already."""
    import sbattn.train.loop as loop
    from sbattn import TrainConfig
    from sbattn.records.checkpoint import read_record

    def reader_gone(history, epochs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(loop, "epoch_line", reader_gone)
    config = TrainConfig(device="cpu", dataset="fake", width=0.0625, batch_size=32, precision="fp32", epochs=2,
                         milestones=[1], layout="contiguous", seed=0, output_dir=str(tmp_path))
    with pytest.raises(BrokenPipeError):
        loop.train(config, quiet=True)
    assert read_record(tmp_path / f"{config.run_name}.ckpt")["epoch"] == 1


def test_what_the_streams_encoding_lacks_is_escaped_not_lost():
    """PYTHONIOENCODING=ascii and an image named é.jpg: each line still prints, the é escaped (it was taken for a
    closed stream, and every line after it was lost)."""
    import io
    from sbattn.console import Stream
    raw = io.BytesIO()
    real = io.TextIOWrapper(raw, encoding="ascii")
    stream = Stream(real, -1)
    stream.write("\u00e9.jpg: cat 0.91\n")
    stream.write("dog.jpg: dog 0.88\n")
    stream.flush()
    assert raw.getvalue().decode() == "\\xe9.jpg: cat 0.91\ndog.jpg: dog 0.88\n" and stream.real is real


def test_sbattns_warnings_are_one_line_on_the_command_line(tmp_path):
    """A cache that cannot be read is said in one line, not Python's two (file, line and the source line)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = ("import warnings, sbattn.console\nfrom sbattn.errors import SbattnWarning\nsbattn.console.install()\n"
              "warnings.warn('ignoring unreadable cache file x', SbattnWarning)\nwarnings.warn('a library speaks')")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.splitlines()
    assert lines[0] == "sbattn: warning: ignoring unreadable cache file x"
    assert "UserWarning: a library speaks" in lines[1]  # others keep Python's form
