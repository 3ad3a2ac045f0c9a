"""Training and evaluation throughput of the reference implementation's VGG16 (baseline, SE, SB) on this machine.

    python benchmarks/speed.py                    # CPU or the first GPU, a few minutes on 2 CPU cores
    python benchmarks/speed.py --json speed.json  # the same table, saved as JSON too

For each model and precision (fp32, and what --precision auto picks here) it reports images/s of the training
step alone (one fixed batch), of training end to end (on-device augmentation from uint8 data, forward, backward,
optimiser step: what an epoch costs, evaluation apart), of evaluation, and the end-to-end figure as a fraction
of the hardware limit: the measured matrix-product peak divided by the step's FLOPs per image.
Figures are medians over --repeats; the machines are shared and noisy, so compare ratios measured together.

    python benchmarks/speed.py --epoch --models sb --precisions auto --data-dir ../shared/data

times instead one whole epoch of real training through `sbattn train` (50,000 images, every step as a run takes
it), and the evaluation of the 10,000 test images after it.

    python benchmarks/speed.py --preset airbench

measures a preset's network, batch size, optimiser and augmentation instead (airbench: its network at batch 1024,
bf16 where the machine has it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sbattn import create_model  # noqa: E402
from sbattn.data import train_batches  # noqa: E402
from sbattn.config import TrainConfig  # noqa: E402
from sbattn.config.presets import preset_options  # noqa: E402
from sbattn.train.evaluation import evaluate, memory_format  # noqa: E402
from sbattn.train.loop import train  # noqa: E402
from sbattn.train.step import (make_optimization, precision_label, reference_optimizer,  # noqa: E402
                               resolve_precision)
from sbattn.models.summary import summarize  # noqa: E402
from sbattn.system import cpu_matrix_isa, cpu_model, keep_freed_memory  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int, repeats: int) -> float:
    """GFLOP/s of a large square matrix product: the ceiling the convolutions can approach."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / min(times) / 1e9


ONEDNN_PROBE = """if True:
    import torch
    x = torch.randn(8, 64, 16, 16).to(memory_format=torch.channels_last).requires_grad_()
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().sum().backward()
"""


def onednn_kernels() -> dict[str, str]:
    """The oneDNN kernels a channels-last bf16 convolution runs here, per pass (forward_training, backward_data,
    backward_weights), e.g. "brg_conv_fwd:avx512_core_amx": the ISA after the colon says whether AMX was used."""
    done = subprocess.run([sys.executable, "-c", ONEDNN_PROBE], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                          capture_output=True, text=True, timeout=120)
    kernels = {}
    for line in done.stdout.splitlines():
        fields = line.split(",")
        if len(fields) > 7 and fields[2:6] == ["primitive", "exec", "cpu", "convolution"]:
            kernels[fields[7]] = fields[6]
    return kernels


def environment(device: torch.device) -> dict:
    """What the figures were measured on."""
    env = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        return {**env, "gpu": torch.cuda.get_device_name(device)}
    kernels = onednn_kernels()
    return {**env, "cpu": cpu_model(), "cpu_matrix_isa": cpu_matrix_isa(), "onednn_bf16_conv_kernels": kernels,
            "amx_used": any("amx" in k for k in kernels.values())}


def timed(fn, n: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn(n)
    sync(device)
    return time.perf_counter() - start


def measure(attention, amp_dtype, device, args, images, labels) -> dict:
    torch.manual_seed(0)
    model = create_model(args.arch, attention=attention, width=args.width).to(device)
    fmt = memory_format(device)
    model = model.to(memory_format=fmt)
    if args.preset:  # the preset's optimiser (airbench: its parameter groups)
        config = TrainConfig(**preset_options(args.preset), width=args.width, device=str(device))
        optimizer = make_optimization(model, config, len(labels) // args.batch_size).optimizer
    else:
        optimizer = reference_optimizer(model, 0.01, 9e-6)
    autocast = dict(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    forward = torch.compile(model, mode=args.compile) if args.compile else model

    def step(x, y):
        train_step(forward, optimizer, x.contiguous(memory_format=fmt), y, autocast)

    x0, y0 = next(iter(train_batches(images, labels, args.batch_size, seed=0, epoch=0, mode=args.augment,
                                     generator=torch.Generator(device).manual_seed(0))))
    generator = torch.Generator(device).manual_seed(0)

    def step_alone(n):
        for _ in range(n):
            step(x0, y0)

    def end_to_end(n):
        batches = train_batches(images, labels, args.batch_size, seed=0, epoch=0, generator=generator,
                                mode=args.augment)
        for _, (x, y) in zip(range(n), batches):
            step(x, y)

    step_alone(args.warmup)
    result = {"model": attention or "baseline", "precision": precision_label(amp_dtype)}
    n = args.steps
    result["step_img_s"] = statistics.median(n * args.batch_size / timed(step_alone, n, device)
                                             for _ in range(args.repeats))
    result["train_img_s"] = statistics.median(n * args.batch_size / timed(end_to_end, n, device)
                                              for _ in range(args.repeats))
    test = images[:args.eval_images]
    evaluate(model, test, labels[:args.eval_images], 1000, amp_dtype)
    result["eval_img_s"] = statistics.median(
        len(test) / timed(lambda _: evaluate(model, test, labels[:len(test)], 1000, amp_dtype), 1, device)
        for _ in range(args.repeats))
    return result


def train_step(model, optimizer, x, y, autocast: dict) -> None:
    """One training step as `sbattn train` takes it (its loss bookkeeping apart)."""
    with torch.autocast(**autocast):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def whole_epoch(attention, precision: str, device, args) -> dict:
    """One real training epoch and its evaluation, timed by the training loop itself."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(**{**preset_options(args.preset), "epochs": 1, "milestones": [1]}, device=str(device),
                             attention=attention or "none", batch_size=args.batch_size, width=args.width,
                             data_dir=args.data_dir, precision=precision, compile=bool(args.compile),
                             output_dir=out, seed=0)
        epoch = train(config, quiet=True).history[0]
    return {"model": attention or "baseline", "precision": precision_label(resolve_precision(precision, device)),
            "train_img_s": epoch["images_per_sec"], "eval_img_s": 10_000 / epoch["eval_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--models", default="baseline,se,sb")
    p.add_argument("--precisions", default="fp32,auto")
    p.add_argument("--compile", metavar="MODE", help="torch.compile the model with this mode (e.g. default, "
                   "reduce-overhead, max-autotune-no-cudagraphs)")
    p.add_argument("--epoch", action="store_true", help="time one whole epoch of real training on --data-dir")
    p.add_argument("--data-dir", default="../shared/data", help="CIFAR-10 for --epoch (default: ../shared/data)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--preset", choices=["airbench"], help="a preset's network, batch, optimiser and augmentation")
    args = p.parse_args()
    if args.device == "cpu":
        keep_freed_memory()  # as `sbattn train` does on a CPU
    args.arch, args.augment = "vgg16", "reference"
    if args.preset:
        options = preset_options(args.preset)
        args.arch, args.augment, args.batch_size = options["arch"], options["augment"], options["batch_size"]
        args.precisions = "auto" if args.precisions == p.get_default("precisions") else args.precisions
        args.steps = min(args.steps, 6)
        args.warmup = min(args.warmup, 2)
    device = torch.device(args.device)

    images = labels = None  # --epoch trains on the real data
    if not args.epoch:  # the size of CIFAR-10's training set, as uint8 on the device: memory measured honestly
        images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, device=device)
        labels = torch.randint(0, 10, (50_000,), device=device)
    size = 4096 if device.type == "cuda" else 2048
    peaks = {name: matmul_peak(dtype, device, size, args.repeats)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    env = environment(device)
    where = env.get("gpu") or (f"{env['cpu']}, bf16 matrix instructions {env['cpu_matrix_isa']}, oneDNN's bf16 "
                               f"convolutions: {', '.join(sorted(set(env['onednn_bf16_conv_kernels'].values())))}"
                               f" (AMX {'used' if env['amx_used'] else 'not used'})")
    print(f"device {device} ({where}; {torch.get_num_threads()} threads, torch {torch.__version__}); "
          f"matrix-product peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)

    rows = []
    print(f"{'model':<9}{'precision':<10}{'step img/s':>11}{'train img/s':>12}{'eval img/s':>11}"
          f"{'of limit':>9}{'limit img/s':>12}", flush=True)
    for attention in args.models.split(","):
        attention = None if attention == "baseline" else attention
        flops = summarize(create_model(args.arch, attention=attention, width=args.width)).flops_train
        for precision in args.precisions.split(","):
            amp_dtype = resolve_precision(precision, device)
            row = (whole_epoch(attention, precision, device, args) if args.epoch
                   else measure(attention, amp_dtype, device, args, images, labels))
            peak = peaks["fp32" if amp_dtype is None else "bf16"]  # fp16 runs on the same units as bf16
            row["limit_img_s"] = peak * 1e9 / flops
            row["fraction_of_limit"] = row["train_img_s"] / row["limit_img_s"]
            rows.append(row)
            step = f"{row['step_img_s']:.0f}" if "step_img_s" in row else "-"
            print(f"{row['model']:<9}{row['precision']:<10}{step:>11}{row['train_img_s']:>12.0f}"
                  f"{row['eval_img_s']:>11.0f}{row['fraction_of_limit']:>8.0%}{row['limit_img_s']:>12.0f}",
                  flush=True)
    timing = "train_img_s" if args.epoch else "step_img_s"
    base = {r["precision"]: r[timing] for r in rows if r["model"] == "baseline"}
    for r in rows:
        if r["model"] != "baseline" and r["precision"] in base:
            r["attention_cost"] = base[r["precision"]] / r[timing] - 1
            print(f"{r['model']} {r['precision']}: attention costs {r['attention_cost']:+.1%} of the baseline's "
                  f"step time (measured minutes apart; `benchmarks/ab.py {r['model']}` measures it interleaved)")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak_rss_mb:.0f} MB (the training images, as uint8, included)")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "environment": env, "peaks_gflops": peaks,
                                         "batch_size": args.batch_size,
                                         "rows": rows, "peak_rss_mb": peak_rss_mb}, indent=1))


if __name__ == "__main__":
    main()
