"""The training loop: the reference implementation's recipe, exact metrics, and runs that survive interruption.

The data live on the training device as uint8 and are augmented there in whole batches. Loss and accuracy
are summed on the device and read only when the progress bar refreshes and at the end of an epoch, so the
step loop does not wait on the host. A checkpoint after every epoch (and on Ctrl-C or SIGTERM, mid-epoch)
holds the whole RunState, so a resumed run continues exactly where the last checkpoint stood.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..data import epoch_batches, load_cifar10, steps_per_epoch, to_device_uint8, train_batches
from ..errors import UserError
from ..models import create_model
from ..version import __version__
from . import distributed, provenance
from .checkpoint import load_checkpoint, unwrap
from .config import LAYOUTS, TrainConfig, recipe_differences
from .evaluation import evaluate, memory_format
from .integrity import check_same_data, data_identity
from .options import BOOLEAN_WORDS
from .outputs import (RunPaths, file_failure, format_epoch, lambda_stats, peak_rss_mb, prepare_output_dir,
                      write_finished_run)
from .precision import precision_label, resolve_precision
from .rundir import move_aside, read_finished, remove_stale_temporaries, run_lock
from .signals import StopRequest, alone_signal_handled
from .state import RunState
from .step import EpochSums, make_step
from .tensorboard_log import epoch_logger
from .threads import ThreadGovernor
from .tuning import LayoutChoice, choose_layout, layout_name

__all__ = ["train", "train_epoch", "RunResult", "Run", "EpochTotals", "resume_command"]


@dataclass
class RunResult:
    exit_code: int
    paths: RunPaths
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """What stays fixed through a run: its configuration, where it trains, and how it reports."""

    config: TrainConfig
    ctx: distributed.Context
    device: torch.device
    paths: RunPaths
    amp_dtype: torch.dtype | None
    log: Callable[..., None]
    interactive: bool  # a progress bar on a terminal
    threads: ThreadGovernor
    provenance: dict  # this process's (rank 0's; empty on the others), see engine/provenance.py


@dataclass
class EpochTotals:
    """An epoch's sums, read from the device (global over ranks)."""

    loss: float
    correct: float
    seen: int
    seconds: float


def train(config: TrainConfig, quiet: bool = False) -> RunResult:
    """Train one model as `config` says; returns with exit_code 0 when finished, 130 when interrupted.

    Under torchrun every process calls this; rank 0 alone writes files and shows progress.
    """
    ctx, device_name = distributed.setup(config.device)
    try:
        quiet = quiet or not ctx.main
        log = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, flush=True))
        device = torch.device(device_name)
        run = Run(config, ctx, device, RunPaths(Path(config.output_dir), config.run_name),
                  resolve_precision(config.precision, device), log, not quiet and sys.stderr.isatty(),
                  ThreadGovernor(device), provenance.collect(device, ctx.world_size) if ctx.main else {})
        return _train(run, quiet)
    finally:
        distributed.teardown(ctx)


def _train(run: Run, quiet: bool) -> RunResult:
    """The run under its lock (rank 0 holds it): a finished run is reported and left alone."""
    ctx, paths = run.ctx, run.paths
    if ctx.main:
        prepare_output_dir(paths.output_dir)
    with run_lock(paths) if ctx.main else contextlib.nullcontext():
        finished = distributed.gather_objects(ctx, _finished_or_cleared(run) if ctx.main else None)[0]
        if finished is not None:
            summary = finished["summary"]
            run.log(f"{paths.name} finished earlier: final test accuracy {100 * summary['final_eval_acc']:.2f}%; "
                    f"its files are {paths.with_suffix('.{pth,json,csv,png}')}; nothing was trained (--overwrite "
                    f"trains it again, moving these aside)")
            return RunResult(0, paths, finished["history"], summary)
        return _train_run(run, quiet)


def _finished_or_cleared(run: Run) -> dict | None:
    """The record of the run when it finished earlier; else None, the ground cleared for training: the temporary
    files of a killed save removed and, with --overwrite, the earlier run's files moved aside."""
    config, paths = run.config, run.paths
    for stale in remove_stale_temporaries(paths):
        run.log(f"removed {stale}, left behind by a save that was killed")
    record = read_finished(paths.summary)
    if config.overwrite:
        folder = move_aside(paths)
        run.log(f"--overwrite: moved the earlier files of {paths.name} to {folder}") if folder else None
        return None
    if record is not None:
        differences = recipe_differences(record["summary"]["config"], config)
        if differences:
            raise UserError(f"{paths.summary} is a finished run of another recipe ({'; '.join(differences)}): "
                            f"use another --output-dir, or --overwrite to replace it", code=2)
    return record


def _train_run(run: Run, quiet: bool) -> RunResult:
    config, ctx, device, paths = run.config, run.ctx, run.device, run.paths
    ckpt = _checkpoint_to_resume(run)
    seed = config.seed if config.seed is not None else ckpt["seed"] if ckpt else _shared_seed(ctx)
    torch.manual_seed(seed)
    data = load_cifar10(config.data_dir, config.dataset, config.download, config.cache_dir, config.resize,
                        progress=not quiet)
    identity = data_identity(data)
    if ckpt:
        check_same_data(ckpt, identity, paths.checkpoint)
    train_x, test_x = to_device_uint8(data.train_images, device), to_device_uint8(data.test_images, device)
    train_y = torch.as_tensor(data.train_labels, device=device)
    test_y = torch.as_tensor(data.test_labels, device=device)

    layout = _layout(run, ckpt)
    model = create_model(config.arch, num_classes=len(data.classes), **config.model_options()).to(device)
    wrapped = distributed.wrap(ctx, model.to(memory_format=LAYOUTS[layout.layout]), device, config.sync_bn)
    state = RunState.start(config, unwrap(wrapped), device, run.amp_dtype, seed, len(data.classes), ctx.rank,
                           layout.layout, run.provenance)
    state.data = identity
    if ckpt:  # SyncBatchNorm conversion makes new modules: the state holds the ones that train
        steps = steps_per_epoch(len(train_y), config.batch_size, ctx.world_size)
        note = state.restore(ckpt, ctx, paths.checkpoint, steps)
        run.log(note) if note else None
        run.log(f"resuming {paths.name} at epoch {state.epoch + 1}, step {state.step}")
    sums = EpochSums.zeros(device)
    step = make_step(config.compile, wrapped, state.optimizer, state.scaler, run.amp_dtype, sums, device)
    params = sum(p.numel() for p in state.model.parameters())
    run.log(f"{paths.name}: {config.arch} attention={config.attention} params={params:,} data={data.source} "
            f"device={device}{f' x {ctx.world_size} processes' if ctx.distributed else ''} "
            f"precision={precision_label(run.amp_dtype)} layout={layout.layout} ({layout.how}) seed={seed}"
            f"{'' if config.compile == 'none' else f' compile={config.compile}'}")

    stop = StopRequest()
    events = paths.output_dir / "tensorboard" / paths.name if config.tensorboard and ctx.main else None
    with stop.installed(), alone_signal_handled(), epoch_logger(events, state.epoch) as log_epoch:
        while state.epoch < config.epochs:
            totals = train_epoch(run, state, step, sums, train_x, train_y, stop)
            if state.step:  # stopped inside the epoch
                _save(run, state)
                run.log(f"{stop.name}: stopped at epoch {state.epoch + 1}, step {state.step}; checkpoint saved to "
                        f"{paths.checkpoint}\nresume with: {resume_command(config, ctx)}")
                return RunResult(130, paths, state.history)
            _end_epoch(run, state, totals, test_x, test_y)
            log_epoch(state.history[-1])
            _save(run, state)
            if distributed.any_rank(ctx, bool(stop), device):
                run.log(f"stopped after epoch {state.epoch}; resume with: {resume_command(config, ctx)}")
                return RunResult(130, paths, state.history)

    if not ctx.main:
        return RunResult(0, paths, state.history)
    summary = _finish(run, state, params, data, test_x, test_y)
    run.log(f"final test accuracy {100 * summary['final_eval_acc']:.2f}% in fp32 (best per-epoch "
            f"{100 * summary['best_eval_acc']:.2f}% at epoch {summary['best_epoch']}, in "
            f"{precision_label(run.amp_dtype)}); results in {paths.output_dir}")
    return RunResult(0, paths, state.history, summary)


def _save(run: Run, state: RunState) -> None:
    """Checkpoint the run; a file-system failure (a full disk, ...) is one line, the last good checkpoint kept."""
    checkpoint = run.paths.checkpoint
    kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint.exists()
            else "no checkpoint had been written yet")
    with file_failure(checkpoint, f"{kept}; make room, then resume with: {resume_command(run.config, run.ctx)}"):
        state.save(checkpoint, run.config, run.ctx)


def _checkpoint_to_resume(run: Run) -> dict | None:
    """The run's checkpoint when it is to be resumed; refuses to start over one unasked."""
    config, ctx, checkpoint = run.config, run.ctx, run.paths.checkpoint
    if not os.path.lexists(checkpoint):
        if config.resume:
            run.log(f"no checkpoint at {checkpoint}: starting from the beginning")
        return None
    if not config.resume:
        raise UserError(f"{checkpoint} holds an unfinished run: add --resume to continue it, or --overwrite to "
                        f"start over (moving it aside)", code=2)
    ckpt = load_checkpoint(checkpoint, config)
    if ckpt["world_size"] != ctx.world_size and ckpt["step"] != 0:
        raise UserError(f"{checkpoint} was written mid-epoch by {ckpt['world_size']} process(es): resume "
                        f"it with {ckpt['world_size']} (torchrun --nproc_per_node), or from an epoch's end", code=2)
    return ckpt


def _layout(run: Run, ckpt: dict | None) -> LayoutChoice:
    """A resumed run keeps its layout (runs from before layouts were chosen trained in the device's rule)."""
    if ckpt:
        return LayoutChoice(ckpt.get("layout") or layout_name(memory_format(run.device)), "resumed")
    choice = choose_layout(run.config, run.device, run.amp_dtype)
    # Every rank trains in rank 0's choice: the measurement may differ between processes.
    return distributed.gather_objects(run.ctx, choice)[0]


def train_epoch(run: Run, state: RunState, step_fn: Callable[[torch.Tensor, torch.Tensor], None], sums: EpochSums,
                train_x: torch.Tensor, train_y: torch.Tensor, stop: StopRequest) -> EpochTotals:
    """Train the epoch under way from its next step, to its end or to a stop request, with `step_fn` adding to
    `sums`; the totals come back reduced over ranks. On a stop, state.step is the number of steps done (never 0),
    else it is 0."""
    config, ctx, epoch, start_step = run.config, run.ctx, state.epoch, state.step
    sums.restart(state.partial, start_step)
    seen_before = sums.seen
    steps = steps_per_epoch(len(train_y), config.batch_size, ctx.world_size)
    lr = float(state.optimizer.param_groups[0]["lr"])
    state.model.train()
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not run.interactive, dynamic_ncols=True)
    started = refreshed = time.perf_counter()
    step, stopping = start_step, False
    for step, (x, y) in enumerate(_epoch_batches(run, state, train_x, train_y), start=start_step):
        step_fn(x.contiguous(memory_format=state.memory_format), y)
        sums.seen += len(y)
        bar.update(1)
        now = time.perf_counter()
        run.threads.poll(now)
        last = step + 1 == steps
        if run.interactive and now - refreshed > 1.0 or last or stop:  # reading sums waits for the device
            refreshed = now
            _check_finite(run, sums.nonfinite, epoch)
            bar.set_postfix(loss=f"{sums.loss.item() / sums.seen:.4f}",
                            acc=f"{100 * sums.correct.item() / sums.seen:.2f}%", lr=f"{lr:.4g}",
                            ips=f"{(sums.seen - seen_before) / (now - started):.0f}")
        # Ranks agree on stopping every few steps, so that all of them stop at the same one.
        if not ctx.distributed:
            stopping = bool(stop)
        elif (step + 1) % 8 == 0 or last:
            stopping = distributed.any_rank(ctx, bool(stop), run.device)
        if stopping:
            break
    bar.close()
    stopping = stopping and step + 1 < steps  # a stop in the last step ends the epoch whole
    seconds = sums.seconds + time.perf_counter() - started
    seen = torch.tensor(float(sums.seen), dtype=sums.loss.dtype, device=run.device)
    loss, correct, seen = distributed.all_reduce_sum(ctx, sums.loss, sums.correct, seen)
    state.step = step + 1 if stopping else 0
    state.partial = ({"loss": loss.cpu(), "correct": correct.cpu(), "seen": int(seen.item()), "seconds": seconds}
                     if stopping else None)
    return EpochTotals(loss.item(), correct.item(), int(seen.item()), seconds)


def _epoch_batches(run: Run, state: RunState, train_x: torch.Tensor, train_y: torch.Tensor):
    """The epoch's batches from its next step: augmented batch by batch from the run's stream, or with --compile
    step a whole epoch at once (its own draws, seeded by seed and epoch)."""
    config, ctx = run.config, run.ctx
    common = dict(seed=state.seed, epoch=state.epoch, mode=config.augment, start=state.step, rank=ctx.rank,
                  world_size=ctx.world_size)
    if config.compile == "step":
        return epoch_batches(train_x, train_y, config.batch_size, memory_format=state.memory_format, **common)
    return train_batches(train_x, train_y, config.batch_size, generator=state.generator, **common)


def _end_epoch(run: Run, state: RunState, sums: EpochTotals, test_x: torch.Tensor, test_y: torch.Tensor) -> None:
    """Step the schedule, evaluate when due, and add the epoch to the history."""
    config, epoch = run.config, state.epoch
    lr = float(state.optimizer.param_groups[0]["lr"])
    state.scheduler.step()
    entry = {"epoch": epoch + 1, "lr": lr, "train_loss": sums.loss / sums.seen,
             "train_acc": sums.correct / sums.seen, "eval_loss": None, "eval_acc": None,
             "seconds": sums.seconds, "images_per_sec": sums.seen / sums.seconds,
             "eval_seconds": None, "eval_precision": None, "threads": torch.get_num_threads(),
             "thread_ceiling": run.threads.ceiling, "layout": state.layout}
    if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
        started = time.perf_counter()
        entry["eval_loss"], entry["eval_acc"] = evaluate(state.model, test_x, test_y, config.eval_batch_size,
                                                         run.amp_dtype, run.ctx.rank, run.ctx.world_size)
        entry["eval_seconds"] = time.perf_counter() - started
        entry["eval_precision"] = precision_label(run.amp_dtype)  # the training's; the final accuracy is fp32's
    entry.update(lambda_stats(state.model))
    state.history.append(entry)
    state.epoch += 1
    best = max((h["eval_acc"] for h in state.history if h["eval_acc"] is not None), default=None)
    run.log(format_epoch(entry, config.epochs, best is not None and entry["eval_acc"] == best))


def resume_command(config: TrainConfig, ctx: distributed.Context = distributed.Context()) -> str:
    """This process's command line, as the user would type it, with --resume unless it already resumes (and
    without --overwrite, which would start the run afresh once more)."""
    program = Path(sys.argv[0]).name
    module = f"torchrun --nproc_per_node={ctx.world_size} -m sbattn" if ctx.distributed else "python -m sbattn"
    program = {"__main__.py": module, "example.py": "python example.py"}.get(program, program)
    return shlex.join([program, *_without_overwrite(sys.argv[1:])]) + ("" if config.resume else " --resume")


def _without_overwrite(argv: list[str]) -> list[str]:
    """argv less --overwrite in any of its spellings (--overwrite, --overwrite=X, --overwrite X)."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value and arg.lower().strip("'\"") in BOOLEAN_WORDS:
            skip_value = False
            continue
        skip_value = arg == "--overwrite"
        if not (skip_value or arg.startswith("--overwrite=")):
            kept.append(arg)
    return kept


def _shared_seed(ctx: distributed.Context) -> int:
    """A random seed, the same on every rank (rank 0's)."""
    return distributed.gather_objects(ctx, int.from_bytes(os.urandom(4), "little"))[0]


def _check_finite(run: Run, nonfinite: torch.Tensor, epoch: int) -> None:
    """Stop on a non-finite loss. Under torchrun the failing rank exits and torchrun stops the others."""
    bad = nonfinite.item()
    if bad:
        checkpoint = run.paths.checkpoint
        kept = (f"the last good checkpoint is kept at {checkpoint}" if checkpoint.exists()
                else "no checkpoint had been written yet")
        raise UserError(f"non-finite loss at epoch {epoch + 1}, step {bad}"
                        f"{f' on rank {run.ctx.rank}' if run.ctx.distributed else ''}: stopped; {kept}")


def _finish(run: Run, state: RunState, params: int, data, test_x: torch.Tensor, test_y: torch.Tensor) -> dict:
    """The run's summary and files. The final accuracy is the final weights' in fp32, as the reference
    implementation evaluates, on the whole test set in this process alone: what `sbattn evaluate` computes."""
    history = state.history
    best = max((h for h in history if h["eval_acc"] is not None), key=lambda h: h["eval_acc"])
    final_loss, final_acc = evaluate(state.model, test_x, test_y, run.config.eval_batch_size)
    summary = {
        "complete": True, "run": run.paths.name, "version": __version__, "config": run.config.to_dict(),
        "seed": state.seed, "final_eval_acc": final_acc, "final_eval_loss": final_loss,
        "final_eval_precision": "fp32", "last_epoch_eval_acc": history[-1]["eval_acc"],
        "last_epoch_eval_loss": history[-1]["eval_loss"], "best_eval_acc": best["eval_acc"],
        "best_epoch": best["epoch"], "params": params,
        "train_seconds": sum(h["seconds"] for h in history), "data": data.source, "classes": data.classes,
        "device": str(run.device), "precision": precision_label(run.amp_dtype), "finished": provenance.now_iso(),
        "peak_rss_mb": peak_rss_mb(),
    }
    summary["provenance"] = {**run.provenance, "finished": summary["finished"]}
    summary["earlier_sessions"] = state.sessions[:-1]  # the processes that trained the run before a resume
    write_finished_run(run.config, run.paths, state.model, history, summary, len(data.classes))
    return summary
