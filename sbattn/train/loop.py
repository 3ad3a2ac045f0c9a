"""train(): one run, top-down. The Trainer takes the run's lock, reports a finished run and leaves it
alone, or readies it (`prepare`: its checkpoint when it resumes, its seed, its data on the device as uint8, its
layout, its model, under DDP when torchrun runs it, its RunState and the training step --compile asks for), then
steps each epoch to its end (train/epoch.py), closes it (evaluation, schedule, checkpoint, line) and finishes:
the final evaluation and the run's files. A checkpoint after every epoch (and on Ctrl-C or SIGTERM, mid-epoch)
holds the whole RunState, so a resumed run continues exactly where the last checkpoint stood.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import TrainConfig, LAYOUTS
from ..data import CIFAR10, load_cifar10, normalize, steps_per_epoch, to_device_uint8
from ..errors import SbattnError, UserError
from ..files import keep_copy
from ..models import create_model
from ..records import FinishedRun, finished_run, provenance
from ..records.checkpoint import unwrap
from ..records.integrity import check_same_data, data_identity
from ..records.outputs import complete_finished_run, file_failure, peak_rss_mb, write_finished_run, write_record
from ..records.rundir import move_aside, prepare_output_dir, remove_stale_temporaries, run_lock, undo_interrupted_move
from ..records.tensorboard_log import epoch_logger
from ..version import __version__

from . import distributed
from .epoch import Epoch, end_epoch, epoch_line, Pipeline, make_pipeline
from .evaluation import memory_format
from .process import followed_agent, StopRequest, alone_signal_handled
from .state import Run, RunResult, RunState, checkpoint_to_resume, continued_by_torchrun
from .step import precision_label, EpochSums, Objective, make_step, LayoutChoice, choose_layout, layout_name

__all__ = ["train", "Trainer", "RunResult", "Prepared", "prepare", "whitening_sample"]


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
        if continued_by_torchrun(config, ctx):
            config = dataclasses.replace(config, resume=True, overwrite=False)
        stop = StopRequest()
        with stop.installed(), alone_signal_handled():
            return Trainer(Run.start(config, ctx, device_name, quiet), quiet, stop).run_to_the_end()
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


class Trainer:
    """One run, driven a step at a time: `advance()` takes the run to its next training step (the first call takes
    the lock and readies the run, or finds it finished; later ones first finish the previous step, and close an
    epoch at its end: schedule, evaluation, checkpoint, line) and returns False once the run has ended, its
    `result` set. A lone run calls it to the end; train/pack.py calls each of several runs' in turn, computing a
    fused group's steps between them. Use it as a context manager: leaving it releases the lock."""

    def __init__(self, run: Run, quiet: bool, stop: StopRequest) -> None:
        self.run, self.quiet, self.stop = run, quiet, stop
        self.result: RunResult | None = None
        self._held = contextlib.ExitStack()  # the lock and the TensorBoard writer, while the run trains
        self._prepared: Prepared | None = None
        self._epoch: Epoch | None = None
        self._stepped = False  # a step was handed over whose after-part is still to do

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._held.__exit__(*exc)  # what the lock does on the way out depends on the error, if one is passing

    def close(self) -> None:
        """Release what the run holds (its lock): at its end, or where it is abandoned without a checkpoint."""
        self._held.close()

    def advance(self) -> bool:
        if self._prepared is None:
            if not self._begin():
                return False
        elif self._stepped:
            assert self._epoch is not None
            self._stepped = False
            self._epoch.after_step()
        while not self._step():
            if not self._end_epoch():
                return False
        return True

    def run_to_the_end(self) -> RunResult:
        with self:
            while self.advance():
                pass
        assert self.result is not None
        return self.result

    def _step(self) -> bool:
        assert self._epoch is not None
        self._stepped = self._epoch.step()
        return self._stepped

    def _begin(self) -> bool:
        """Under the run's lock (rank 0 holds it): the finished run reported and left alone, or the run readied."""
        run = self.run
        ctx, paths = run.ctx, run.paths
        self._held.callback(run.threads.release)
        if ctx.main:
            prepare_output_dir(paths.output_dir)
        agent = followed_agent()  # a torchrun worker that stops when its agent dies: the lock says so to a resume
        if ctx.main:
            self._held.enter_context(run_lock(paths, None if agent is None else (agent, run.config.dist_timeout)))
        finished = distributed.gather_objects(ctx, _finished_or_cleared(run) if ctx.main else None)[0]
        if finished is not None:
            run.log(f"{paths.name} finished earlier: final test accuracy {finished.final_acc:.2f}%; its files are "
                    f"{paths.with_suffix('.{pth,json,csv,png}')}; nothing was trained (--overwrite trains it again, "
                    f"moving these aside)")
            self.result = RunResult(0, paths, finished.history, finished.summary)
            return False
        self._prepared = ready = prepare(run, self.quiet)
        events = paths.tensorboard if run.config.tensorboard and ctx.main else None
        self._log_epoch = self._held.enter_context(epoch_logger(events, ready.state.epoch))
        return self._next_epoch()

    def _next_epoch(self) -> bool:
        run, ready = self.run, self._prepared
        assert ready is not None
        state = ready.state
        if state.epoch < run.config.epoch_count:
            self._epoch = Epoch(run, state, ready.step_fn, ready.sums, ready.pipeline, self.stop,
                                save=lambda: _save(run, state))
            return True
        if not run.ctx.main:
            self.result = RunResult(0, run.paths, state.history)
            return False
        summary = _finish(run, ready)
        run.log(f"final test accuracy {100 * summary['final_eval_acc']:.2f}% in fp32 (best per-epoch "
                f"{100 * summary['best_eval_acc']:.2f}% at epoch {summary['best_epoch']}, in "
                f"{precision_label(run.amp_dtype)}); results in {run.paths.output_dir}")
        self.result = RunResult(0, run.paths, state.history, summary)
        return False

    def _end_epoch(self) -> bool:
        """Close the epoch: a stop inside it checkpoints and ends the run (130); else its evaluation, schedule step,
        checkpoint and line, then the next epoch, or the finish."""
        run, ready, epoch = self.run, self._prepared, self._epoch
        assert ready is not None and epoch is not None
        state, paths = ready.state, run.paths
        totals = epoch.close()
        if state.step:  # stopped inside the epoch
            _save(run, state)
            run.log(f"{self.stop.name}: stopped at epoch {state.epoch + 1}, step {state.step}; checkpoint saved to "
                    f"{paths.checkpoint}\nresume with: {run.resume_command}")
            self.result = RunResult(130, paths, state.history)
            return False
        end_epoch(run, state, totals, ready.pipeline)
        _save(run, state)  # before the epoch is reported: a reader that has gone must not cost it
        self._log_epoch(state.history[-1])
        run.log(epoch_line(state.history, run.config.epoch_count))
        if distributed.any_rank(run.ctx, bool(self.stop), run.device):
            run.log(f"stopped after epoch {state.epoch}; resume with: {run.resume_command}")
            self.result = RunResult(130, paths, state.history)
            return False
        return self._next_epoch()


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


def _save(run: Run, state: RunState) -> None:
    """Checkpoint the run; a file-system failure (a full disk, ...) is one line, the last good checkpoint kept.
    The checkpoint of an epoch's end is kept aside while those inside the next epoch replace it (a run resumed by
    another number of processes goes on from there), until the next epoch's end."""
    checkpoint, epoch_end = run.paths.checkpoint, run.paths.epoch_checkpoint
    kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint.exists()
            else "no checkpoint had been written yet")
    with file_failure(checkpoint, f"{kept}; make room, then resume with: {run.resume_command}"):
        if run.ctx.main and state.step and state.checkpoint_at_epoch_end:
            keep_copy(checkpoint, epoch_end)
        state.save(checkpoint, run.config, run.ctx)
        if run.ctx.main and not state.step:
            epoch_end.unlink(missing_ok=True)
    state.checkpoint_at_epoch_end = not state.step


def _finish(run: Run, ready: Prepared) -> dict:
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
        "final_eval_precision": "fp32", "final_eval_tta": run.config.tta,
        "last_epoch_eval_acc": history[-1]["eval_acc"], "last_epoch_eval_loss": history[-1]["eval_loss"],
        "best_eval_acc": best["eval_acc"],
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


WHITENING_IMAGES = 5000  # what airbench sets its whitening from
# Besides the recipe, the options every rank must share: each changes the sequence of collectives or the result. The
# rest may differ by process (the device's index, the folders, the threads, TensorBoard on rank 0, the timeout).
RANKS_AGREE_ON = ("compile", "checkpoint_steps", "sync_bn", "eval_batch_size", "layout", "resume", "overwrite")


@dataclass
class Prepared:
    """What `prepare` makes of a run: its state, its step and what the step adds to, its data pipeline."""

    state: RunState
    step_fn: Callable[[torch.Tensor, torch.Tensor], None]  # one training step: (images, labels)
    sums: EpochSums  # what `step_fn` adds to
    pipeline: Pipeline  # the data, its batches and evaluations
    params: int

    @property
    def data(self) -> CIFAR10:
        return self.pipeline.data


def whitening_sample(n: int, seed: int) -> torch.Tensor:
    """The training images a data-set layer is set from: WHITENING_IMAGES of the `n` drawn from the run's seed
    (airbench takes the official set's first 5,000, in random order there; an image-folder copy lists them by
    class)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:WHITENING_IMAGES]


def _check_last_batch(n: int, batch_size: int, world_size: int) -> None:
    """Under torchrun every training image counts, as in one process: a last global batch that would leave a rank
    a single sample (which BatchNorm cannot train on) is refused rather than dropped."""
    rest = n % batch_size
    if world_size > 1 and 0 < rest < 2 * world_size:
        raise UserError(f"--batch_size {batch_size} on {n:,} training images leaves a last batch of {rest}, under "
                        f"2 a process over {world_size} processes (BatchNorm trains on 2 or more): one process "
                        f"would train on all {n:,}; choose a batch size that leaves no last batch or one of at least "
                        f"{2 * world_size}", code=2)


def prepare(run: Run, quiet: bool) -> Prepared:
    config, ctx, device, paths = run.config, run.ctx, run.device, run.paths
    ckpt, ckpt_path = checkpoint_to_resume(run)
    seed = config.seed if config.seed is not None else ckpt["seed"] if ckpt else _shared_seed(ctx)
    torch.manual_seed(seed)
    data = load_cifar10(config.data_dir, config.dataset, config.download, config.cache_dir, config.resize,
                        progress=not quiet)
    identity = data_identity(data)
    if not config.drop_last:
        _check_last_batch(len(data.train_labels), config.batch_size, ctx.world_size)
    facts = {**config.recipe.to_dict(), **{k: getattr(config, k) for k in RANKS_AGREE_ON}, "sbattn": __version__,
             "data": identity["fingerprint"]}
    disagreement = distributed.disagreement(ctx, {k: facts[k] for k in sorted(facts)})
    if disagreement:
        if ctx.main and not ckpt:  # nothing of the run exists: its configuration file, just written, goes too
            paths.config.unlink(missing_ok=True)
        raise UserError(disagreement, code=2)
    if ckpt:
        check_same_data(ckpt, identity, ckpt_path)
    train_x, test_x = to_device_uint8(data.train_images, device), to_device_uint8(data.test_images, device)
    train_y = torch.as_tensor(data.train_labels, device=device)
    test_y = torch.as_tensor(data.test_labels, device=device)

    layout = _layout(run, ckpt)
    model = create_model(config.arch, num_classes=len(data.classes), **config.model_options()).to(device)
    init_from_data: Callable[[torch.Tensor], None] | None = getattr(model, "init_whitening", None)
    if init_from_data is not None:  # a layer set from the data (airbench's whitening)
        init_from_data(normalize(train_x[whitening_sample(len(train_y), seed).to(device)]))
    fmt = LAYOUTS[layout.layout]
    # Module.to takes memory_format=; torch's overloads of it omit that.
    wrapped = distributed.wrap(ctx, model.to(memory_format=fmt), device, config.sync_bn)  # type: ignore[call-overload]
    steps = steps_per_epoch(len(train_y), config.batch_size, ctx.world_size, config.drop_last)
    state = RunState.start(config, unwrap(wrapped), device, run.amp_dtype, seed, len(data.classes), ctx.rank,
                           layout.layout, steps, run.provenance)
    state.data = identity
    if ckpt:  # SyncBatchNorm conversion makes new modules: the state holds the ones that train
        note = state.restore(ckpt, ctx, ckpt_path, steps)
        run.log(note) if note else None
        state.checkpoint_at_epoch_end = ckpt_path == paths.checkpoint and not state.step
        run.log(f"resuming {paths.name} at epoch {state.epoch + 1}, step {state.step}")
    sums = EpochSums.zeros(device, config.batch_size, len(train_y))
    objective = Objective(config.label_smoothing, ctx.world_size if config.optimizer == "sgd_decoupled" else 0)
    step = (run.step_maker or make_step)(config.compile, wrapped, state.optimizer, state.scaler, run.amp_dtype,
                                         sums, device, objective)
    params = sum(p.numel() for p in state.model.parameters())
    run.log(f"{paths.name}: {config.arch} attention={config.attention} params={params:,} data={data.source} "
            f"device={device}{f' x {ctx.world_size} processes' if ctx.distributed else ''} "
            f"precision={precision_label(run.amp_dtype)} layout={layout.layout} ({layout.how}) seed={seed}"
            f"{'' if config.compile == 'none' else f' compile={config.compile}'}"
            f"{' rng=reference' if config.rng == 'reference' else ''}")
    return Prepared(state, step, sums, make_pipeline(run, data, train_x, train_y, test_x, test_y), params)


def _layout(run: Run, ckpt: dict | None) -> LayoutChoice:
    """A resumed run keeps its layout (runs from before layouts were chosen trained in the device's rule)."""
    if ckpt:
        return LayoutChoice(ckpt["layout"] or layout_name(memory_format(run.device)), "resumed")
    # Rank 0 alone measures (ranks measuring at once on shared cores would time each other) and writes the cache;
    # every rank trains in its choice.
    choice = choose_layout(run.config, run.device, run.amp_dtype) if run.ctx.main else None
    return distributed.gather_objects(run.ctx, choice)[0]


def _shared_seed(ctx: distributed.Context) -> int:
    """A random seed, the same on every rank (rank 0's)."""
    return distributed.gather_objects(ctx, int.from_bytes(os.urandom(4), "little"))[0]
