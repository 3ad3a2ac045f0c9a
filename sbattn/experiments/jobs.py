"""Several training runs at once, each in its own `sbattn train` process (the suites' --jobs K).

A small model at batch 64 leaves a large GPU mostly idle and keeps a CPU's cores busy on per-operation
overhead; K processes side by side fill either. Every run is a command a user could type, `sbattn train --config
<run>.config.json --resume`, its configuration written to that file first; its output goes to <run>.log. On the
CPU the cores are shared out: each process gets cores // K threads, and a run left training alone at the end is
told (ALONE_SIGNAL) to take them all.

The runs live in their own sessions, so a signal reaches them once, from the suite: Ctrl-C or SIGTERM to the
suite is passed on to every run, which checkpoints and stops; the suite waits for each to save. If the suite is
killed outright, Linux sends its runs a SIGTERM, so they save too.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Callable, Sequence

import torch

from ..config import TrainConfig
from ..files import as_argument, check_regular
from ..records import RunPaths
from ..records.outputs import file_failure, write_record
from ..system import thread_budget
from ..train.pack import Outcome, train_together
from ..train.process import ALONE_SIGNAL, ALONE_THREADS

__all__ = ["Job", "run_jobs", "run_together", "threads_per_job", "run_devices", "PACKS"]

# How a suite's runs share a device: "process", each its own `sbattn train` process (run_jobs); "stream", all in
# this process, a step of each in turn, on CUDA each on its own stream (run_together, train/pack.py); "fused", as
# "stream", the runs of one model that differ in their seeds alone stepped as one (train/pack.py).
PACKS = ("process", "stream", "fused")


@dataclass
class Job:
    label: str  # how the suite names the run in its progress lines
    config: TrainConfig

    @property
    def paths(self) -> RunPaths:
        return RunPaths.of(self.config)


def threads_per_job(jobs: int, device: str) -> int:
    """Intra-op threads for each of `jobs` processes: the suite's threads (OMP_NUM_THREADS, else every core) shared
    out on the CPU (at least one each); on a GPU, where the host only launches kernels and augments nothing, at
    most four each."""
    cores = thread_budget()
    return max(1, cores // jobs) if device.startswith("cpu") else max(1, min(4, cores // jobs))


def run_devices(device: str) -> list[str]:
    """The devices that K runs of `device` share out: each GPU for "cuda" on a machine of several, else `device`."""
    count = torch.cuda.device_count() if device == "cuda" and torch.cuda.is_available() else 1
    return [f"cuda:{i}" for i in range(count)] if count > 1 else [device]


def _least_used(devices: list[str], in_use: list[str]) -> str:
    return min(devices, key=lambda d: (in_use.count(d), devices.index(d)))


@dataclass
class Started:
    """A run's process, and what the suite keeps of its start: the file its configuration went in (this suite's
    own, removed when the process ends) and where the process's output begins in the run's log."""

    process: subprocess.Popen
    options: Path
    log_offset: int


def _start(job: Job, device: str | None, env: dict, child_setup: Callable[[], None]) -> Started:
    """`sbattn train` on the job's configuration, on `device` where given, its output appended to the job's log.
    The configuration goes to a file of this suite's own, not to `<run>.config.json`, which the run writes under
    its lock: another suite on the same folder, with another recipe, can neither change what this one trains nor
    have its run taken for this one's."""
    paths = job.paths
    check_regular(paths.log, "the run's output is appended to it: the run was not started")  # a FIFO would hang
    with file_failure(paths.output_dir, "the run was not started"):
        paths.output_dir.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"sbattn-{paths.name[:80]}.", suffix=".json")
    os.close(handle)
    options = Path(name)
    write_record(options, job.config.rerun_options())
    command = ["train", "--config", as_argument(options), *job.config.action_flags(),
               f"--device={device or job.config.device}"]
    with file_failure(paths.log, "the run was not started"):  # never through a link planted at its name
        out = open(paths.log, "ab", opener=lambda path, flags: os.open(path, flags | os.O_NOFOLLOW, 0o644))
    with out:
        offset = out.seek(0, os.SEEK_END)
        process = subprocess.Popen([sys.executable, "-m", "sbattn", *command], stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, preexec_fn=child_setup)
    return Started(process, options, offset)


def _child_setup_hook() -> Callable[[], None]:
    """A pre-exec hook that blocks ALONE_SIGNAL and, on Linux, asks for a SIGTERM when this process dies."""
    prctl = None
    if sys.platform == "linux":
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child must not dlopen
        except (OSError, AttributeError):
            pass
    parent = os.getpid()

    def hook() -> None:
        if ALONE_SIGNAL is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {ALONE_SIGNAL})
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the suite died before the request took effect
                os._exit(130)
    return hook


def _last_line(path: Path, offset: int = 0) -> str:
    """The last line of `path` from byte `offset` on (where one process's output began)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _ended(job: Job, code: int, seconds: float, log: Callable[[str], None], log_offset: int = 0) -> int:
    """Report a run's process that ended (its output in the run's log from `log_offset`); the suite's exit status
    for it (0: finished, 130: stopped)."""
    if code == 0:
        log(f"{job.label}: finished in {seconds / 60:.1f} min; {_last_line(job.paths.log, log_offset)}")
        return 0
    if code in (130, -signal.SIGINT, -signal.SIGTERM):
        checkpoint = job.paths.checkpoint
        log(f"{job.label}: stopped, " + (f"checkpoint kept ({checkpoint.name})" if checkpoint.exists()
                                         else "before its first checkpoint"))
        return 130
    log(f"{job.label}: failed with exit status {code}: {_last_line(job.paths.log, log_offset)}")
    return code if code > 0 else 1


def run_jobs(jobs: Sequence[Job], parallel: int, log: Callable[[str], None]) -> int:
    """Train `jobs`, `parallel` at a time; 0 when all finished, else the first failure's exit status.

    After a failure or an interruption no new run starts, and the running ones are waited for.
    """
    pending = list(jobs)
    running: dict[subprocess.Popen, tuple[Job, float, str, Started]] = {}
    if not jobs:
        return 0
    device = jobs[0].config.device or "cpu"
    devices = run_devices(device)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_job(parallel, device)),
           ALONE_THREADS: str(threads_per_job(1, device))}
    child_setup = _child_setup_hook()
    told_alone = ALONE_SIGNAL is None or not device.startswith("cpu") or parallel == 1
    status = 0
    stopped = False

    def more_to_start() -> bool:  # no new run after a failure or an interruption
        return bool(pending) and status == 0 and not stopped

    def forward(signum: int, frame: FrameType | None) -> None:  # each run checkpoints and stops (a second Ctrl-C: stops at once)
        nonlocal stopped
        stopped = True
        for proc in running:
            proc.send_signal(signum)

    in_main = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        while running or more_to_start():
            while more_to_start() and len(running) < parallel:
                job = pending.pop(0)
                job_device = _least_used(devices, [d for _, _, d, _ in running.values()])
                start = _start(job, job_device if len(devices) > 1 else None, env, child_setup)
                proc = start.process
                running[proc] = (job, time.perf_counter(), job_device, start)
                if stopped:  # the signal came while the process was being started
                    proc.send_signal(signal.SIGINT)
                verb = "resuming" if job.paths.checkpoint.exists() else "started"
                on = f" on {job_device}" if len(devices) > 1 else ""
                log(f"{job.label}: {verb} {job.paths.name}{on} (log: {job.paths.log})")
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                job, started, _, start = running.pop(proc)
                start.options.unlink(missing_ok=True)
                code = _ended(job, proc.returncode, time.perf_counter() - started, log, start.log_offset)
                status = status or code  # every end reported, the first failure kept
            if not told_alone and ALONE_SIGNAL is not None and len(running) == 1 and not more_to_start():
                told_alone = True
                next(iter(running)).send_signal(ALONE_SIGNAL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        log(f"{len(pending)} run(s) not started")
    return status or (130 if pending else 0)  # a signal after the last run finished stops nothing


def run_together(jobs: Sequence[Job], parallel: int, log: Callable[[str], None], fuse: bool = False) -> int:
    """Train `jobs` in this process, `parallel` at a time, a step of each in turn (train/pack.py); reported and
    ended as run_jobs reports and ends them: 0 when all finished, else the first failure's exit status."""
    started: dict[int, float] = {}
    status = 0

    def ended(i: int, outcome: Outcome) -> None:
        nonlocal status
        code = _ended(jobs[i], outcome.exit_code, time.perf_counter() - started.get(i, 0.0), log)
        status = status or code

    def began(i: int) -> None:
        started[i] = time.perf_counter()
        verb = "resuming" if jobs[i].paths.checkpoint.exists() else "started"
        log(f"{jobs[i].label}: {verb} {jobs[i].paths.name} in this process (log: {jobs[i].paths.log})")

    outcomes = train_together([job.config for job in jobs], parallel, ended, began, fuse)
    left = sum(o.result is None and o.error is None for o in outcomes)
    if left:
        log(f"{left} run(s) not started")
    return status or (130 if left else 0)
