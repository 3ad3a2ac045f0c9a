"""The one error contract: an error is one printable line, whatever the files and values it quotes hold."""
import subprocess
import sys
from pathlib import Path

from sbattn.errors import CheckpointError, UserError

ROOT = Path(__file__).resolve().parents[1]


def test_an_error_quoting_a_file_is_one_printable_line():
    e = UserError("cannot read \x1b[2Jclear\nscreen\u202eevil\x07 (No such file)")
    assert str(e) == "cannot read \\x1b[2Jclear screen\\u202eevil\\x07 (No such file)"
    assert str(e).isprintable()


def test_the_command_line_prints_no_escape_from_a_file_name(tmp_path):
    weights = tmp_path / "run\x1b]0;owned\x07.pth"  # a name that would retitle the terminal
    weights.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "sbattn", "evaluate", str(weights)], capture_output=True,
                          text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == CheckpointError.code
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr and "\\x1b]0;owned\\x07" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
