"""Several runs in one process: K models trained side by side on one GPU, each on its own CUDA stream, each
training step replayed as one CUDA graph.

The question it answers (docs/gpu.md): K `sbattn train` processes on one GPU time-slice it, so their small kernels
never run at the same time; on one H200 seven of them gave 2.43x one run's throughput, and the reference's
eight-row table was projected at 945 s. Do runs that share the GPU inside one process, on separate streams, do
better?

    python benchmarks/streams.py --json OUT.json    # on a GPU: the seven runs of the reference's two tables,
                                                    # each alone, then all at once
    python benchmarks/streams.py --dry-run          # the same steps on the CPU, eager, at a tiny size

Each model takes the reference's recipe's step (batch 64, SGD with Nesterov momentum, bf16 autocast where
--precision auto picks it) on a few fixed random batches copied into the graph's input each step: augmentation,
evaluation and the host's epoch bookkeeping are left out, so the figures are the training steps alone. The
projection is the reference's 80 epochs of 782 steps at the measured rate of the slowest model.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sbattn import create_model  # noqa: E402
from sbattn.cli.suites import COMPARE_DEFAULT  # noqa: E402
from sbattn.config import TrainConfig  # noqa: E402
from sbattn.train.evaluation import memory_format  # noqa: E402
from sbattn.train.step import (EpochSums, make_momentum_buffers, precision_label,  # noqa: E402
                               reference_optimizer, resolve_precision, train_step)
from sbattn.experiments.suites import run_config  # noqa: E402
from sbattn.experiments.variants import ablation_variants, compare_variants  # noqa: E402
from sbattn.files import atomic_write  # noqa: E402

STEPS_PER_RUN = 80 * 782  # the reference's 80 epochs of 50,000 images at batch 64


@dataclass
class Runner:
    """One model's training: its static input batch, its step as a CUDA graph (None: stepped eagerly) and its
    stream."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    sums: EpochSums
    x: torch.Tensor
    y: torch.Tensor
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    amp_dtype: torch.dtype | None
    graph: "torch.cuda.CUDAGraph | None" = None
    stream: "torch.cuda.Stream | None" = None

    def body(self) -> None:
        """The engine's training step on the static batch, without autocast's cast cache (a graph must not
        capture it)."""
        train_step(self.model, self.optimizer, None, self.amp_dtype, self.sums, self.x, self.y, cast_cache=False)

    def step(self, i: int) -> None:
        """Step `i`: the next batch into the static input, then the step, on this runner's stream."""
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            x, y = self.batches[i % len(self.batches)]
            self.x.copy_(x)
            self.y.copy_(y)
            if self.graph is not None:
                self.graph.replay()
            else:
                self.optimizer.zero_grad(set_to_none=True)
                self.body()


def make_runner(name: str, config: TrainConfig, device: torch.device, batch: int, compiled: bool) -> Runner:
    torch.manual_seed(config.seed)
    layout = memory_format(device)
    model = create_model(config.arch, num_classes=10, **config.model_options()).to(device, memory_format=layout)
    if compiled:  # inductor's fused kernels, captured into this script's own graph (no CUDA graphs of its own)
        model = torch.compile(model)
    optimizer = reference_optimizer(model, config.init_lr, config.weight_decay)
    make_momentum_buffers(optimizer)  # made outside the graph, so that they outlive its replays
    images = [torch.randint(0, 256, (batch, 3, 32, 32), device=device).float().div_(255)
              .contiguous(memory_format=layout) for _ in range(4)]
    batches = [(x, torch.randint(0, 10, (batch,), device=device)) for x in images]
    sums = EpochSums.zeros(device, batch, batch)
    return Runner(name, model, optimizer, sums, batches[0][0].clone(), batches[0][1].clone(),
                  batches, resolve_precision(config.precision, device))


def capture(runner: Runner, warmup: int) -> None:
    """Warm up on a side stream (as capture requires), then record one whole step as a CUDA graph."""
    runner.stream = torch.cuda.Stream()
    runner.stream.wait_stream(torch.cuda.current_stream())
    for i in range(warmup):
        runner.step(i)
    torch.cuda.current_stream().wait_stream(runner.stream)
    runner.optimizer.zero_grad(set_to_none=True)  # the gradients are then made in the graph's own memory
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=runner.stream):
        runner.body()
    runner.graph = graph


def graph_vs_eager(config: TrainConfig, device: torch.device, batch: int, compiled: bool, steps: int = 8) -> dict:
    """The same model from the same seed trained on the same batches, replayed as a graph and stepped eagerly:
    how far apart their losses and weights end. Only rounding and the order of atomic adds may differ."""
    def weights(runner: Runner) -> torch.Tensor:
        return torch.cat([p.detach().float().flatten() for p in runner.model.parameters()])

    graph, eager = (make_runner(name, config, device, batch, compiled) for name in ("graph", "eager"))
    start = weights(eager)
    capture(graph, warmup=3)  # three real steps, then a capture that runs nothing
    for i in range(3):
        eager.step(i)
    for runner in (graph, eager):
        for i in range(steps):
            runner.step(i)
    torch.cuda.synchronize()
    g, e = weights(graph), weights(eager)
    losses = [graph.sums.loss.item(), eager.sums.loss.item()]
    return {"steps": 3 + steps, "loss_sums": losses, "loss_rel_diff": abs(losses[0] - losses[1]) / abs(losses[1]),
            "weights_rel_diff": ((g - e).norm() / e.norm()).item(),
            "weights_moved": ((e - start).norm() / e.norm()).item()}


def timed(runners: list[Runner], steps: int, device: torch.device) -> float:
    """Seconds for `steps` steps of every runner, issued in turn so that their streams overlap."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for i in range(steps):
        for runner in runners:
            runner.step(i)
    sync()
    return time.perf_counter() - started


def table_configs(base: TrainConfig) -> dict[str, TrainConfig]:
    """The reference's two tables as their seven distinct runs (as benchmarks/gpu.py trains them)."""
    variants = {v.key: v for v in compare_variants(COMPARE_DEFAULT, "sigmoid") + ablation_variants()}
    return {key: run_config(base, v, 0) for key, v in variants.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the figures here as they are measured")
    p.add_argument("--dry-run", action="store_true", help="the CPU, eager, width 0.0625, batch 16, 3 steps")
    p.add_argument("--steps", type=int, default=200, help="timed steps of each model (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="timings of each figure; the median is kept")
    p.add_argument("--compile", action="store_true", help="compile each model (inductor) before capturing it")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no GPU here: use --dry-run for the CPU")
    width, batch, steps = (0.0625, 16, 3) if args.dry_run else (1.0, 64, args.steps)
    base = TrainConfig(device=device.type, width=width, batch_size=batch, dataset="fake")
    figures: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "batch": batch, "width": width, "steps": steps,
                     "compiled": args.compile, "graphs": device.type == "cuda"}

    def record(key: str, value, line: str) -> None:
        figures[key] = value
        print(line, flush=True)
        if args.json:
            text = json.dumps(figures, indent=1).encode()
            atomic_write(args.json, lambda f: f.write(text))

    configs = table_configs(base)
    if device.type == "cuda":
        check = graph_vs_eager(configs["sb-tanh"], device, batch, args.compile)
        record("graph_vs_eager", check, f"sb-tanh, {check['steps']} steps as a graph and eagerly: losses "
               f"{check['loss_rel_diff']:.1e} apart, weights {check['weights_rel_diff']:.1e} apart (they moved "
               f"{check['weights_moved']:.1e} from the start)")
    runners, setup_s = [], {}
    for name, config in configs.items():
        started = time.perf_counter()
        runner = make_runner(name, config, device, batch, args.compile)
        if device.type == "cuda":
            capture(runner, warmup=3)
        runners.append(runner)
        setup_s[name] = time.perf_counter() - started
        record("setup_s", setup_s, f"{name}: ready in {setup_s[name]:.1f} s ({precision_label(runner.amp_dtype)})")

    alone = {}
    for runner in runners:
        seconds = statistics.median(timed([runner], steps, device) for _ in range(args.repeats))
        alone[runner.name] = steps * batch / seconds
        record("alone_img_s", alone, f"{runner.name} alone: {alone[runner.name]:,.0f} img/s")
    seconds = statistics.median(timed(runners, steps, device) for _ in range(args.repeats))
    together = len(runners) * steps * batch / seconds
    one = alone["sb-tanh"]  # the reference's command
    record("together", {"runs": len(runners), "img_s": together, "vs_one_run_alone": together / one,
                        "table_projected_s": STEPS_PER_RUN * seconds / steps},
           f"{len(runners)} at once: {together:,.0f} img/s together, {together / one:.2f}x sb-tanh alone; the "
           f"table's training steps projected at {STEPS_PER_RUN * seconds / steps:.0f} s")
    if device.type == "cuda":
        record("peak_memory_gib", torch.cuda.max_memory_allocated() / 2**30,
               f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    for runner in runners:
        if not (runner.sums.steps.item() > 0 and torch.isfinite(runner.sums.loss).item()):
            print(f"{runner.name}: no finite training loss", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
