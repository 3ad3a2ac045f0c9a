"""What the reliability tests share: the tiny run they train, and how they read a command's one line of error."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Callable

from sbattn.cli import main

TINY = ["--device=cpu", "--dataset=fake", "--width=0.0625", "--batch_size=32", "--precision=fp32",
        "--eval-batch-size=256", "--epochs=1", "--milestones=[1]"]


def one_line(err: str) -> str:
    """The one line a command printed to stderr (progress bars aside), with no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and "decoding images" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def finished_output(out: Path, args: list[str]) -> Path:
    """`out` holding one finished run of `args`."""
    assert main(["train", *args, f"--output-dir={out}"]) == 0
    return out


def copy_of(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def ctrl_c_at_step(make_step: Callable, n: int, across_runs: bool = False) -> Callable:
    """A stand-in for train.start.make_step whose step sends this process a SIGINT after its `n`-th call, counted
    over the run, or with `across_runs` over every run's steps in this process (the stop then comes at that step's
    end, as a Ctrl-C would)."""
    shared: list[int] = []

    def make(*args, **kwargs):
        step, calls = make_step(*args, **kwargs), shared if across_runs else []

        def interrupted(x, y):
            step(x, y)
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGINT)
        return interrupted
    return make


def run_name(*argv: str) -> str:
    """The name of the run that `sbattn train *argv` trains: the stem of its files."""
    from sbattn.cli.main import build_parser
    from sbattn.cli.options import config_from_args
    return config_from_args(build_parser().parse_args(["train", *argv])).run_name
