"""Two versions of one CPU training step, measured back to back in one process.

    python benchmarks/ab.py sb --width 1 --precision bf16          # what the SB blocks cost over the baseline
    python benchmarks/ab.py se --width 1 --precision bf16          # the same for SE
    python benchmarks/ab.py layout --attention sb --width 1        # NCHW against channels-last
    python benchmarks/ab.py optimizer --attention sb --width 1     # foreach SGD against fused SGD

The two set-ups are stepped in turn (--repeats rounds of --steps steps each) and the medians compared, so that
the noise of a shared machine falls on both alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sbattn import create_model  # noqa: E402
from sbattn.train.step import reference_optimizer  # noqa: E402
from speed import train_step  # noqa: E402  (this directory is on the path when a script here runs)

CL, NCHW = torch.channels_last, torch.contiguous_format
# For each comparison, its two set-ups: what differs from (--attention, channels-last, foreach SGD).
COMPARISONS = {
    "sb": (("baseline", dict(attention="none")), ("SB", dict(attention="sb"))),
    "se": (("baseline", dict(attention="none")), ("SE", dict(attention="se"))),
    "layout": (("NCHW", dict(fmt=NCHW)), ("channels-last", dict(fmt=CL))),
    "optimizer": (("foreach SGD", dict(kernel="foreach")), ("fused SGD", dict(kernel="fused"))),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("comparison", choices=COMPARISONS)
    p.add_argument("--attention", choices=("none", "sb", "se"), default="sb", help="for layout and optimizer")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="steps per round (default: 15, 4 at width >= 0.5)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    steps = args.steps or (15 if args.width < 0.5 else 4)
    autocast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    setups = {}
    for name, changes in COMPARISONS[args.comparison]:
        s = {"attention": args.attention, "fmt": CL, "kernel": "foreach", **changes}
        torch.manual_seed(0)
        model = create_model("vgg16", attention=None if s["attention"] == "none" else s["attention"],
                             width=args.width).to(memory_format=s["fmt"])
        optimizer = reference_optimizer(model, 0.01, 9e-6, kernel=s["kernel"])
        x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=s["fmt"])
        setups[name] = (model, optimizer, x, torch.randint(0, 10, (args.batch_size,)))

    def step(model, optimizer, x, y):
        train_step(model, optimizer, x, y, autocast)

    times: dict[str, list[float]] = {name: [] for name in setups}
    for setup in setups.values():
        for _ in range(3):
            step(*setup)
    for _ in range(args.repeats):
        for name, setup in setups.items():
            start = time.perf_counter()
            for _ in range(steps):
                step(*setup)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    (a, ta), (b, tb) = ((name, statistics.median(t)) for name, t in times.items())
    line = f"width {args.width:g} {args.precision}: {a} {ta:.1f} ms, {b} {tb:.1f} ms per step; "
    if args.comparison in ("sb", "se"):
        print(line + f"the {b} blocks cost {tb / ta - 1:+.1%} of the baseline's step time")
    else:
        print(f"{args.attention} " + line + f"{b} is {ta / tb:.2f}x as fast")


if __name__ == "__main__":
    main()
