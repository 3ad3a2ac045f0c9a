"""train(): the reference implementation's recipe, exact metrics, and runs that survive interruption.

A run trains under its lock: a finished run is reported and left alone, an unfinished one resumes from its
checkpoint. The data live on the training device as uint8 and are augmented there in whole batches. A checkpoint
after every epoch (and on Ctrl-C or SIGTERM, mid-epoch) holds the whole RunState, so a resumed run continues
exactly where the last checkpoint stood.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Generator

from ..config import TrainConfig
from ..errors import SbattnError, UserError
from ..records import FinishedRun, finished_run, provenance
from ..records.outputs import complete_finished_run, file_failure, peak_rss_mb, write_finished_run, write_record
from ..records.rundir import (move_aside, prepare_output_dir, remove_stale_temporaries, run_lock,
                              undo_interrupted_move)
from ..records.tensorboard_log import epoch_logger
from ..version import __version__
from . import distributed
from .agent import followed_agent
from .epoch import end_epoch, epoch_line, train_epoch
from .precision import precision_label
from .run import Run, RunResult
from .signals import StopRequest, alone_signal_handled
from .start import Ready, make_ready
from .state import RunState

__all__ = ["train", "run_steps", "to_the_end", "RunResult"]


def train(config: TrainConfig, quiet: bool = False) -> RunResult:
    """Train one model as `config` says; returns with exit_code 0 when finished, 130 when interrupted.

    Under torchrun every process calls this; rank 0 alone writes files and shows progress.
    """
    ctx, device_name = distributed.setup(config.resolved_device, config.dist_timeout)
    try:
        if config.rng == "reference" and ctx.distributed:
            raise UserError(f"--rng reference is the reference implementation's single-process run (one process "
                            f"draws every image from the global generator); under torchrun ({ctx.world_size} "
                            f"processes) use --rng sbattn", code=2)
        if distributed.restart_count() and not config.resume:
            # Restarted by torchrun's agent after a worker died (at any world size, one process included): the same
            # command, which must now continue the run from its last checkpoint (neither refuse it nor, with
            # --overwrite, move it aside again).
            config = dataclasses.replace(config, resume=True, overwrite=False)
        stop = StopRequest()
        with stop.installed(), alone_signal_handled():
            return to_the_end(run_steps(Run.start(config, ctx, device_name, quiet), quiet, stop))
    except SbattnError as e:  # under torchrun, an error every rank hits is printed once, by rank 0
        e.quiet = not distributed.one_report(ctx, str(e))
        raise
    except RuntimeError as e:
        if not (ctx.distributed and distributed.lost_peer(e)):
            raise
        error = UserError(distributed.unanswered(ctx, e))
        error.quiet = not distributed.one_report(ctx, str(error), consequence=True)
        raise error from None
    finally:
        distributed.teardown(ctx)


Steps = Generator[None, None, RunResult]


def to_the_end(steps: Steps) -> RunResult:
    """Drive a run's steps (run_steps) to its end."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def run_steps(run: Run, quiet: bool, stop: StopRequest) -> Steps:
    """The run under its lock (rank 0 holds it), yielding after each training step so that a driver can step
    several runs in turn (train/pack.py); a finished run is reported and left alone. `stop` is the process's stop
    request, its signals installed by the driver."""
    ctx, paths = run.ctx, run.paths
    if ctx.main:
        prepare_output_dir(paths.output_dir)
    agent = followed_agent()  # a torchrun worker that stops when its agent dies: the lock says so to a resume
    held = None if agent is None else (agent, run.config.dist_timeout)
    with run_lock(paths, held) if ctx.main else contextlib.nullcontext():
        finished = distributed.gather_objects(ctx, _finished_or_cleared(run) if ctx.main else None)[0]
        if finished is not None:
            run.log(f"{paths.name} finished earlier: final test accuracy {finished.final_acc:.2f}%; its files are "
                    f"{paths.with_suffix('.{pth,json,csv,png}')}; nothing was trained (--overwrite trains it again, "
                    f"moving these aside)")
            return RunResult(0, paths, finished.history, finished.summary)
        return (yield from _epochs(run, make_ready(run, quiet), stop))


def _finished_or_cleared(run: Run) -> FinishedRun | None:
    """The record of the run when it finished earlier (its finish completed, if a kill cut it short); else None,
    the ground cleared for training: the temporary files of a killed save removed, with --overwrite the earlier
    run's files moved aside, and the run's configuration file written (what its resume command trains). First a
    killed --overwrite's half-done move is undone, so that the run is read whole."""
    config, paths = run.config, run.paths
    for restored in undo_interrupted_move(paths):
        run.log(f"put {restored} back, where an --overwrite that was killed had moved it from")
    for stale in remove_stale_temporaries(paths):
        run.log(f"removed {stale}, left behind by a save that was killed")
    if config.overwrite:
        folder = move_aside(paths)
        run.log(f"--overwrite: moved the earlier files of {paths.name} to {folder}") if folder else None
        record = None
    else:
        record = finished_run(paths, config, "use another --output-dir, or --overwrite to replace it")
        if record is not None and complete_finished_run(paths):
            run.log(f"completed the finish of {paths.name}, cut short earlier (its results.txt line, its checkpoint "
                    f"removed)")
    if record is None:
        with file_failure(paths.config, "nothing was trained: make room or fix the path, then run it again"):
            write_record(paths.config, config.rerun_options())
    return record


def _epochs(run: Run, ready: Ready, stop: StopRequest) -> Steps:
    """Epochs to the last, a checkpoint after each; a stop request checkpoints and returns 130."""
    config, ctx, paths, state = run.config, run.ctx, run.paths, ready.state
    events = paths.tensorboard if config.tensorboard and ctx.main else None
    with epoch_logger(events, state.epoch) as log_epoch:
        while state.epoch < config.epoch_count:
            totals = yield from train_epoch(run, state, ready.step, ready.sums, ready.pipeline, stop,
                                            save=lambda: _save(run, state))
            if state.step:  # stopped inside the epoch
                _save(run, state)
                run.log(f"{stop.name}: stopped at epoch {state.epoch + 1}, step {state.step}; checkpoint saved to "
                        f"{paths.checkpoint}\nresume with: {run.resume_command}")
                return RunResult(130, paths, state.history)
            end_epoch(run, state, totals, ready.pipeline)
            _save(run, state)  # before the epoch is reported: a reader that has gone must not cost it
            log_epoch(state.history[-1])
            run.log(epoch_line(state.history, config.epoch_count))
            if distributed.any_rank(ctx, bool(stop), run.device):
                run.log(f"stopped after epoch {state.epoch}; resume with: {run.resume_command}")
                return RunResult(130, paths, state.history)

    if not ctx.main:
        return RunResult(0, paths, state.history)
    summary = _finish(run, ready)
    run.log(f"final test accuracy {100 * summary['final_eval_acc']:.2f}% in fp32 (best per-epoch "
            f"{100 * summary['best_eval_acc']:.2f}% at epoch {summary['best_epoch']}, in "
            f"{precision_label(run.amp_dtype)}); results in {paths.output_dir}")
    return RunResult(0, paths, state.history, summary)


def _save(run: Run, state: RunState) -> None:
    """Checkpoint the run; a file-system failure (a full disk, ...) is one line, the last good checkpoint kept."""
    checkpoint = run.paths.checkpoint
    kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint.exists()
            else "no checkpoint had been written yet")
    with file_failure(checkpoint, f"{kept}; make room, then resume with: {run.resume_command}"):
        state.save(checkpoint, run.config, run.ctx)


def _finish(run: Run, ready: Ready) -> dict:
    """The run's summary and files. The final accuracy is the final weights' in fp32, as the reference
    implementation evaluates, on the whole test set in this process alone: what `sbattn evaluate` computes."""
    state, data = ready.state, ready.data
    history = state.history
    best = max((h for h in history if h["eval_acc"] is not None), key=lambda h: h["eval_acc"])
    final = ready.pipeline.evaluate(state.model, final=True, tta=run.config.tta)
    summary = {
        "complete": True, "run": run.paths.name, "version": __version__, "config": run.config.to_dict(),
        "seed": state.seed, "final_eval_acc": final.acc, "final_eval_loss": final.loss,
        "final_eval_acc_batch_mean": final.batch_mean_acc, "final_eval_loss_batch_mean": final.batch_mean_loss,
        "final_eval_precision": "fp32", "final_eval_tta": run.config.tta, "last_epoch_eval_acc": history[-1]["eval_acc"],
        "last_epoch_eval_loss": history[-1]["eval_loss"], "best_eval_acc": best["eval_acc"],
        "best_epoch": best["epoch"], "params": ready.params,
        "train_seconds": sum(h["seconds"] for h in history), "data": data.source, "classes": data.classes,
        "device": str(run.device), "precision": precision_label(run.amp_dtype), "finished": provenance.now_iso(),
        "peak_rss_mb": peak_rss_mb(), "threads": sorted({h["threads"] for h in history if h.get("threads")}),
    }
    if run.config.tta:  # the same weights without it, for comparison with runs that have none
        summary["final_eval_acc_no_tta"] = ready.pipeline.evaluate(state.model, final=True).acc
    summary["provenance"] = {**run.provenance, "finished": summary["finished"]}
    summary["earlier_sessions"] = state.sessions[:-1]  # the processes that trained the run before a resume
    write_finished_run(run.config, run.paths, state.model, history, summary, len(data.classes))
    return summary
