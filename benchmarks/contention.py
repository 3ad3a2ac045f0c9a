"""Training throughput alone and beside a busy process: does a run sharing its machine slow down in proportion?

    python benchmarks/contention.py                      # width-0.125 VGG16-SB on the fake set, 3 epochs
    python benchmarks/contention.py --busy 2 --json out.json

Each measurement is one `sbattn train` process (its own OpenMP runtime, as a user's run has), timed by the
training loop itself: the median images/s of its epochs after the first. "Busy" processes are pure-Python spin
loops, one core's worth each. A run sharing C cores with B busy processes should get about C / (C + B) of the
cores, so the fair ratio is printed beside the measured one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sbattn.system import available_cores  # noqa: E402

SPIN = "while True: pass"


def run_epochs(args, env_extra: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "sbattn", "train", "--dataset", "fake", "--device", "cpu",
               f"--width={args.width}", f"--epochs={args.epochs}", f"--milestones=[{args.epochs}]", "--seed=0",
               f"--precision={args.precision}", f"--batch_size={args.batch_size}", f"--output-dir={out}",
               "--eval-every", str(args.epochs)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"training failed: {done.stderr.strip().splitlines()[-1:]}")
        history = json.loads(next(Path(out).glob("*.json")).read_text())["history"]
    rates = [h["images_per_sec"] for h in history[1:]] or [history[0]["images_per_sec"]]
    return {"images_per_sec": statistics.median(rates), "threads": history[-1]["threads"], "wall_s": wall}


def measure(args, env_extra: dict[str, str], busy: int) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)
        return run_epochs(args, env_extra)
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", type=int, default=1, help="busy processes beside the run (default: 1)")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the training process, e.g. OMP_NUM_THREADS=1 (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    env_extra = dict(item.split("=", 1) for item in args.env)
    cores = available_cores()
    alone = measure(args, env_extra, busy=0)
    shared = measure(args, env_extra, busy=args.busy)
    fair = cores / (cores + args.busy) if args.busy < cores else 1 / (1 + args.busy)
    result = {"cores": cores, "busy": args.busy, "env": env_extra, "alone": alone, "shared": shared,
              "ratio": shared["images_per_sec"] / alone["images_per_sec"], "fair_ratio": fair}
    print(f"{cores} cores, {args.busy} busy process(es), env {env_extra or '-'}")
    print(f"  alone:  {alone['images_per_sec']:8.0f} img/s  ({alone['threads']} threads)")
    print(f"  shared: {shared['images_per_sec']:8.0f} img/s  ({shared['threads']} threads)")
    print(f"  ratio {result['ratio']:.3f}   (fair share about {fair:.2f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
