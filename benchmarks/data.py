"""Data-layer timings: cold decode and cached load of the JPEG CIFAR-10 archive, and augmentation throughput.

    .venv/bin/python benchmarks/data.py [ARCHIVE] [--device cpu|cuda]

ARCHIVE defaults to ../shared/data/cifar10-jpeg.tar.gz next to the repository; the decode rows are
skipped, saying so, when it is absent. The cache goes to a temporary directory, so the decode is cold.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbattn.data import augment, train_batches  # noqa: E402
from sbattn.data import load_cifar10  # noqa: E402

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(fn, images_per_call: int, device: torch.device, seconds: float = 0.5, repeats: int = 5) -> float:
    """Median over repeats of calls per ``seconds`` window, after a warm-up."""
    for _ in range(3):
        fn()
    _sync(device)
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            calls += 1
        _sync(device)
        rates.append(calls * images_per_call / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", nargs="?", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows: list[tuple[str, str]] = []

    if args.archive.exists():
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            d = load_cifar10(args.archive, cache_dir=cache, progress=False)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            load_cifar10(args.archive, cache_dir=cache, progress=False)
            warm = time.perf_counter() - start
        n = len(d.train_images) + len(d.test_images)
        rows += [(f"decode {args.archive.name} ({n} images, cold cache)", f"{cold:.2f} s"),
                 ("load again (cached)", f"{warm:.2f} s")]
    else:
        print(f"{args.archive} is absent: skipping the decode and cached-load timings")

    gen = torch.Generator(device=device).manual_seed(0)
    pool = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pool = pool.to(device)
    labels = torch.zeros(len(pool), dtype=torch.int64, device=device)

    def epoch() -> None:
        for _ in train_batches(pool, labels, 512, seed=0, epoch=0, generator=gen):
            pass

    # On a CPU shared with other work, more threads can wait on each other; so also show one thread.
    default_threads = torch.get_num_threads()
    thread_counts = [default_threads] if device.type != "cpu" or default_threads == 1 else [default_threads, 1]
    cases = [(f"augment {mode}, batch {bs}", bs, lambda b=pool[:bs].clone(), m=mode: augment(b, gen, m), 0.5, 5)
             for mode, bs in (("reference", 64), ("reference", 512), ("standard", 512))]
    cases.append(("train_batches epoch (gather+augment reference+normalize), batch 512", len(pool), epoch, 0.1, 3))
    rates: dict[str, list[str]] = {name: [] for name, *_ in cases}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for name, n, fn, seconds, repeats in cases:
            rates[name].append(f"{images_per_second(fn, n, device, seconds, repeats):,.0f}")
    torch.set_num_threads(default_threads)

    print(f"sbattn data benchmark on {device}")
    width = max(len(name) for name in [r[0] for r in rows] + list(rates))
    for name, value in rows:
        print(f"  {name:<{width}}{value:>14}")
    if device.type == "cpu":
        print(f"  {'images/s with':<{width}}" + "".join(f"{f'{t} threads' if t > 1 else '1 thread':>14}"
                                                       for t in thread_counts))
    else:
        print(f"  {'':<{width}}{'images/s':>14}")
    for name, values in rates.items():
        print(f"  {name:<{width}}" + "".join(f"{v:>14}" for v in values))


if __name__ == "__main__":
    main()
