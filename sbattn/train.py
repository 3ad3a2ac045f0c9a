"""Training and evaluation: the seed's recipe, exact metrics, and runs that survive interruption.

The data live on the training device as uint8 and are augmented there in whole batches. Loss and accuracy
are summed on the device and read only when the progress bar refreshes and at the end of an epoch, so the
step loop does not wait on the host. A checkpoint after every epoch (and on Ctrl-C or SIGTERM, mid-epoch)
holds every state the run depends on, so a resumed run continues exactly where the last checkpoint stood.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import resource
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import __version__, distributed
from .attention import ShiftBalance
from .augment import steps_per_epoch, to_device_uint8, train_batches
from .checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint, save_weights, unwrap
from .cli import UserError
from .config import TrainConfig
from .data import load_cifar10
from .evaluation import evaluate, memory_format, sum_dtype
from .figures import plot_history
from .jobs import alone_signal_handled
from .models import create_model

__all__ = ["train", "RunResult", "RunPaths", "resolve_precision", "results_line", "seed_optimizer"]


@dataclass
class RunPaths:
    output_dir: Path
    name: str

    def with_suffix(self, suffix: str) -> Path:
        return self.output_dir / f"{self.name}{suffix}"

    @property
    def checkpoint(self) -> Path:
        return self.with_suffix(".ckpt")

    @property
    def summary(self) -> Path:
        return self.with_suffix(".json")


@dataclass
class RunResult:
    exit_code: int
    paths: RunPaths
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX-512 BF16 or AMX); without it bf16 autocast is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def seed_optimizer(model: nn.Module, lr: float, weight_decay: float, kernel: str = "foreach") -> torch.optim.SGD:
    """The seed's optimiser: SGD with Nesterov momentum 0.9. kernel: "foreach" (ours) or "fused" (measured no
    faster in a whole step, see docs/performance.md)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay,
                           **{kernel: True})


def results_line(config: TrainConfig, acc: float) -> str:
    """One line of the seed's results.txt."""
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return (f"{stamp} ::: [attn_ratio : {config.attn_ratio}, use_sb : {config.use_sb}, use_se : {config.use_se}, "
            f"activation : {config.activation}] --> acc : {100 * acc:.2f}%.\n")


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output directory and prove it writable before any training is spent."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror or e}); "
                        f"choose another with --output-dir", code=2) from None
    return out


class StopRequest:
    """Turns SIGINT and SIGTERM into a flag the step loop checks, so a step is never cut in half."""

    def __init__(self):
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            def handler(signum, frame):
                if self.signal is not None:  # a second Ctrl-C: stop now
                    raise KeyboardInterrupt
                self.signal = signum
            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        else:
            previous = {}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def resume_command(config: TrainConfig, ctx: distributed.Context = distributed.Context()) -> str:
    """This process's command line, as the user would type it, with --resume unless it already resumes."""
    program = Path(sys.argv[0]).name
    module = f"torchrun --nproc_per_node={ctx.world_size} -m sbattn" if ctx.distributed else "python -m sbattn"
    program = {"__main__.py": module, "example.py": "python example.py"}.get(program, program)
    return shlex.join([program, *sys.argv[1:]]) + ("" if config.resume else " --resume")


def lambda_stats(model: nn.Module) -> dict[str, list[float]]:
    """Per SB block: mean and standard deviation of |lambda|."""
    lams = [m.lam.detach().abs().float() for m in model.modules() if isinstance(m, ShiftBalance)]
    if not lams:
        return {}
    return {"lambda_abs_mean": [l.mean().item() for l in lams], "lambda_abs_std": [l.std().item() for l in lams]}


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_history(paths: RunPaths, history: list[dict], summary: dict) -> None:
    scalar_keys = [k for k in history[0] if not isinstance(history[0][k], list)] if history else []
    def write_csv(f):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=scalar_keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        f.write(text.getvalue().encode())
    atomic_write(paths.with_suffix(".csv"), write_csv)
    atomic_write(paths.summary, lambda f: f.write(json.dumps({"summary": summary, "history": history},
                                                             indent=1).encode()))


def _format_epoch(e: dict, epochs: int, best: bool) -> str:
    line = (f"epoch {e['epoch']:>3}/{epochs}  lr {e['lr']:.4g}  train loss {e['train_loss']:.4f} "
            f"acc {100 * e['train_acc']:.2f}%")
    if e["eval_acc"] is not None:
        line += f"  eval loss {e['eval_loss']:.4f} acc {100 * e['eval_acc']:.2f}%{' (best)' if best else ''}"
    return line + f"  {e['seconds']:.1f}s  {e['images_per_sec']:.0f} img/s"


def train(config: TrainConfig, quiet: bool = False) -> RunResult:
    """Train one model as `config` says; returns with exit_code 0 when finished, 130 when interrupted.

    Under torchrun every process calls this; rank 0 alone writes files and shows progress.
    """
    ctx, device_name = distributed.setup(config.device)
    try:
        return _train(config, quiet or not ctx.main, ctx, torch.device(device_name))
    finally:
        distributed.teardown(ctx)


def _train(config: TrainConfig, quiet: bool, ctx: distributed.Context, device: torch.device) -> RunResult:
    paths = RunPaths(Path(config.output_dir), config.run_name)
    if ctx.main:
        prepare_output_dir(paths.output_dir)
    log = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, flush=True))
    ckpt = None
    if paths.checkpoint.exists():
        if not config.resume:
            raise UserError(f"{paths.checkpoint} holds an unfinished run: add --resume to continue it, "
                            f"or move it away to start over", code=2)
        try:
            ckpt = load_checkpoint(paths.checkpoint, config)
        except CheckpointError as e:
            raise UserError(str(e), code=2) from None
        if ckpt["world_size"] != ctx.world_size and ckpt["step"] != 0:
            raise UserError(f"{paths.checkpoint} was written mid-epoch by {ckpt['world_size']} process(es): resume "
                            f"it with {ckpt['world_size']} (torchrun --nproc_per_node), or from an epoch's end", code=2)
    elif config.resume:
        log(f"no checkpoint at {paths.checkpoint}: starting from the beginning")

    seed = config.seed if config.seed is not None else (
        ckpt["seed"] if ckpt else _shared_seed(ctx))
    torch.manual_seed(seed)
    data = load_cifar10(config.data_dir, config.dataset, config.download, config.cache_dir, config.resize,
                        progress=not quiet)
    train_x, test_x = to_device_uint8(data.train_images, device), to_device_uint8(data.test_images, device)
    train_y = torch.as_tensor(data.train_labels, device=device)
    test_y = torch.as_tensor(data.test_labels, device=device)

    model = create_model(config.arch, num_classes=len(data.classes), **config.model_options()).to(device)
    amp_dtype = resolve_precision(config.precision, device)
    fmt = memory_format(device)
    model = model.to(memory_format=fmt)
    if ckpt:
        model.load_state_dict(ckpt["model"])
    wrapped = distributed.wrap(ctx, model, device, config.sync_bn)
    model = unwrap(wrapped)  # SyncBatchNorm conversion makes new modules: keep the one that trains
    optimizer = seed_optimizer(model, config.init_lr, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, config.milestones, config.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # Each rank augments with its own stream; rank 0's is the single-process run's.
    generator = torch.Generator(device).manual_seed(seed + 1_000_003 * ctx.rank)
    history: list[dict] = []
    start_epoch, start_step, partial = 0, 0, None
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        history, start_epoch, start_step, partial = ckpt["history"], ckpt["epoch"], ckpt["step"], ckpt["partial"]
        if ckpt["world_size"] == ctx.world_size:
            _set_rng_state(ckpt["rng"][ctx.rank], generator)
        else:  # at an epoch's end with another number of processes: fresh augmentation streams
            generator.manual_seed(seed + 1_000_003 * ctx.rank + start_epoch)
            log(f"resuming with {ctx.world_size} process(es) a run checkpointed with {ckpt['world_size']}: "
                f"the same recipe, other augmentation draws")
        if not ctx.main:
            partial = None  # rank 0 carries the interrupted epoch's global sums
        log(f"resuming {paths.name} at epoch {start_epoch + 1}, step {start_step}")
    # On CUDA, "reduce-overhead" replays the forward and backward as CUDA graphs: at batch 64 the GPU would
    # otherwise wait on Python to launch hundreds of small kernels a step.
    compile_mode = "reduce-overhead" if device.type == "cuda" else "default"
    step_model = torch.compile(wrapped, mode=compile_mode) if config.compile else wrapped
    params = sum(p.numel() for p in model.parameters())
    steps = steps_per_epoch(len(train_y), config.batch_size, ctx.world_size)
    interactive = not quiet and sys.stderr.isatty()
    log(f"{paths.name}: {config.arch} attention={config.attention or 'none'} params={params:,} data={data.source} "
        f"device={device}{f' x {ctx.world_size} processes' if ctx.distributed else ''} "
        f"precision={'fp32' if amp_dtype is None else str(amp_dtype).removeprefix('torch.')} seed={seed}")

    def save(epoch: int, step: int, partial_sums: dict | None) -> None:
        rng = distributed.gather_objects(ctx, _rng_state(generator))  # a collective: every rank takes part
        if ctx.main:
            save_checkpoint(paths.checkpoint, {
                "version": __version__, "config": config.to_dict(), "num_classes": len(data.classes),
                "world_size": ctx.world_size, "seed": seed, "epoch": epoch, "step": step, "partial": partial_sums,
                "history": history, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng})

    stop = StopRequest()
    with stop.installed(), alone_signal_handled():
        for epoch in range(start_epoch, config.epochs):
            lr = optimizer.param_groups[0]["lr"]
            sums = partial or {"loss": torch.zeros(()), "correct": torch.zeros(()), "seen": 0, "seconds": 0.0}
            acc_dtype = sum_dtype(device)
            loss_sum, correct = sums["loss"].to(device, acc_dtype), sums["correct"].to(device, acc_dtype)
            seen, seconds_before = sums["seen"], sums["seconds"]
            nonfinite = torch.zeros((), dtype=torch.int64, device=device)  # first bad step + 1, else 0
            model.train()
            bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                       disable=not interactive, dynamic_ncols=True)
            started, refreshed, step, stopping = time.perf_counter(), time.perf_counter(), start_step, False
            batches = train_batches(train_x, train_y, config.batch_size, seed=seed, epoch=epoch,
                                    generator=generator, mode=config.augment, start=start_step,
                                    rank=ctx.rank, world_size=ctx.world_size)
            for step, (x, y) in enumerate(batches, start=start_step):
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = step_model(x.contiguous(memory_format=fmt))
                    loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss = loss.detach()
                nonfinite += (~torch.isfinite(loss)).long() * (nonfinite == 0) * (step + 1)
                loss_sum += loss.to(acc_dtype) * len(y)
                correct += (out.argmax(1) == y).sum()
                seen += len(y)
                bar.update(1)
                now = time.perf_counter()
                last = step + 1 == steps
                if interactive and now - refreshed > 1.0 or last or stop:  # reading sums waits for the device
                    refreshed = now
                    _check_finite(ctx, nonfinite, epoch, paths)
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}%",
                                    lr=f"{lr:.4g}", ips=f"{(seen - sums['seen']) / (now - started):.0f}")
                # Ranks agree on stopping every few steps, so that all of them stop at the same one.
                if not ctx.distributed:
                    stopping = bool(stop)
                elif (step + 1) % 8 == 0 or last:
                    stopping = distributed.any_rank(ctx, bool(stop), device)
                if stopping:
                    step += 1
                    break
            bar.close()
            train_seconds = seconds_before + time.perf_counter() - started
            seen_t = torch.tensor(float(seen), dtype=acc_dtype, device=device)
            loss_sum, correct, seen_all = distributed.all_reduce_sum(ctx, loss_sum, correct, seen_t)
            if stopping:
                save(epoch, step, {"loss": loss_sum.cpu(), "correct": correct.cpu(), "seen": int(seen_all.item()),
                                   "seconds": train_seconds})
                name = signal.Signals(stop.signal).name if stop else "stop on another rank"
                log(f"{name}: stopped at epoch {epoch + 1}, step {step}; checkpoint saved to {paths.checkpoint}\n"
                    f"resume with: {resume_command(config, ctx)}")
                return RunResult(130, paths, history)
            start_step, partial = 0, None
            scheduler.step()
            seen = seen_all.item()
            entry = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum.item() / seen,
                     "train_acc": correct.item() / seen, "eval_loss": None, "eval_acc": None,
                     "seconds": train_seconds, "images_per_sec": seen / train_seconds,
                     "eval_seconds": None, "threads": torch.get_num_threads()}
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                started = time.perf_counter()
                entry["eval_loss"], entry["eval_acc"] = evaluate(model, test_x, test_y, config.eval_batch_size,
                                                                 amp_dtype, ctx.rank, ctx.world_size)
                entry["eval_seconds"] = time.perf_counter() - started
            entry.update(lambda_stats(model))
            history.append(entry)
            best = max((h["eval_acc"] for h in history if h["eval_acc"] is not None), default=None)
            log(_format_epoch(entry, config.epochs, best is not None and entry["eval_acc"] == best))
            save(epoch + 1, 0, None)
            if distributed.any_rank(ctx, bool(stop), device):
                log(f"stopped after epoch {epoch + 1}; resume with: {resume_command(config, ctx)}")
                return RunResult(130, paths, history)

    if not ctx.main:
        return RunResult(0, paths, history)
    summary = _finish(config, paths, model, history, params, seed, data, device, amp_dtype)
    log(f"final test accuracy {100 * summary['final_eval_acc']:.2f}% (best {100 * summary['best_eval_acc']:.2f}% "
        f"at epoch {summary['best_epoch']}); results in {paths.output_dir}")
    return RunResult(0, paths, history, summary)


def _shared_seed(ctx: distributed.Context) -> int:
    """A random seed, the same on every rank (rank 0's)."""
    return distributed.gather_objects(ctx, int.from_bytes(os.urandom(4), "little"))[0]


def _check_finite(ctx, nonfinite: torch.Tensor, epoch: int, paths: RunPaths) -> None:
    """Stop on a non-finite loss. Under torchrun the failing rank exits and torchrun stops the others."""
    bad = nonfinite.item()
    if bad:
        kept = (f"the last good checkpoint is kept at {paths.checkpoint}" if paths.checkpoint.exists()
                else "no checkpoint had been written yet")
        raise UserError(f"non-finite loss at epoch {epoch + 1}, step {bad}"
                        f"{f' on rank {ctx.rank}' if ctx.distributed else ''}: stopped; {kept}")


def _finish(config, paths, model, history, params, seed, data, device, amp_dtype) -> dict:
    evaluated = [h for h in history if h["eval_acc"] is not None]
    best = max(evaluated, key=lambda h: h["eval_acc"])
    summary = {
        "complete": True, "run": paths.name, "version": __version__, "config": config.to_dict(), "seed": seed,
        "final_eval_acc": history[-1]["eval_acc"], "final_eval_loss": history[-1]["eval_loss"],
        "best_eval_acc": best["eval_acc"], "best_epoch": best["epoch"], "params": params,
        "train_seconds": sum(h["seconds"] for h in history), "data": data.source, "classes": data.classes,
        "device": str(device),
        "precision": "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    save_weights(paths.with_suffix(".pth"), model, config, history, summary, len(data.classes))
    plot_history(history, paths.with_suffix(".png"), paths.name)
    _write_history(paths, history, summary)
    with open(paths.output_dir / "results.txt", "a") as f:
        f.write(results_line(config, summary["final_eval_acc"]))
    paths.checkpoint.unlink(missing_ok=True)
    return summary
