"""NCHW against channels-last for one training step, measured back to back in one process.

    python benchmarks/layout.py --attention sb --width 1 --precision bf16
    python benchmarks/layout.py --attention none --width 0.25 --precision fp32

The two models are stepped in turn (--repeats rounds of --steps steps each) and the medians compared, so that
the noise of a shared machine falls on both alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sbattn import create_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attention", choices=("none", "sb", "se"), default="sb")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="steps per round (default: 15, 4 at width >= 0.5)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    steps = args.steps or (15 if args.width < 0.5 else 4)
    autocast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    attention = None if args.attention == "none" else args.attention
    setups = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
        torch.manual_seed(0)
        model = create_model("vgg16", attention=attention, width=args.width).to(memory_format=fmt)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, foreach=True)
        x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=fmt)
        setups[name] = (model, optimizer, x, torch.randint(0, 10, (args.batch_size,)))

    def step(model, optimizer, x, y):
        with torch.autocast(**autocast):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

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
    nchw, last = (statistics.median(times[n]) for n in ("NCHW", "channels-last"))
    print(f"{args.attention} width {args.width:g} {args.precision}: NCHW {nchw:.1f} ms, channels-last {last:.1f} ms "
          f"per step; channels-last is {nchw / last:.2f}x as fast")


if __name__ == "__main__":
    main()
