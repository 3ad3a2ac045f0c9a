"""The reference's arithmetic keeps its thread count for the whole run: a run at 2 threads beside busy processes
is the same run, bit for bit, as on a quiet machine. The thread governor, which lowers the count while other
processes hold the cores, stays off: with it on, the busy run records epochs at 1 thread, and at the reference's
width (not this test's, whose sums happen not to depend on the count) 116 of 134 final tensors differed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from _runs import run_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--dataset=fake", "--width=0.125", "--epochs=2", "--milestones=[1]", "--batch_size=32", "--seed=0",
        "--precision=fp32", "--rng=reference", "--device=cpu"]
BUSY = "import time\nend = time.time() + 120\nwhile time.time() < end: pass"


def reference_run(out: Path, busy: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "SBATTN_CACHE": str(out / "cache")}
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        return subprocess.run([sys.executable, "-m", "sbattn", "train", *ARGS, f"--output-dir={out}"],
                              env=env, capture_output=True, text=True, timeout=600)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_the_reference_arithmetic_at_two_threads_is_the_same_run_beside_busy_processes(tmp_path):
    runs = {}
    for busy in (0, 2):
        proc = reference_run(tmp_path / str(busy), busy)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "2 CPU thread(s) for the whole run (the reference's arithmetic): the thread governor is off" in proc.stdout
        runs[busy] = torch.load(tmp_path / str(busy) / f"{run_name(*ARGS)}.pth", weights_only=True)
    quiet, busy = runs[0], runs[2]
    assert quiet["summary"]["threads"] == busy["summary"]["threads"] == [2]
    assert [h["train_loss"] for h in quiet["history"]] == [h["train_loss"] for h in busy["history"]]
    assert all(torch.equal(quiet["state_dict"][k], busy["state_dict"][k]) for k in quiet["state_dict"])
