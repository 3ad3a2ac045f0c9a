"""A run made ready to train: its checkpoint when it resumes, its seed, its data on the device as uint8, its
layout, its model (under DDP when torchrun runs it) and RunState, and the training step that --compile asks for."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import LAYOUTS
from ..data import CIFAR10, load_cifar10, normalize, steps_per_epoch, to_device_uint8
from ..errors import UserError
from ..models import create_model
from ..records.checkpoint import load_checkpoint, unwrap
from ..records.integrity import check_same_data, data_identity
from ..version import __version__
from . import distributed
from .evaluation import memory_format
from .precision import precision_label
from .pipeline import Pipeline, make_pipeline
from .run import Run
from .state import RunState
from .step import EpochSums, Objective, make_step
from .tuning import LayoutChoice, choose_layout, layout_name

WHITENING_IMAGES = 5000  # what airbench sets its whitening from
# Besides the recipe, the options every rank must share: each changes the sequence of collectives or the result. The
# rest may differ by process (the device's index, the folders, the threads, TensorBoard on rank 0, the timeout).
RANKS_AGREE_ON = ("compile", "checkpoint_steps", "sync_bn", "eval_batch_size", "layout", "resume", "overwrite")

__all__ = ["Ready", "make_ready", "whitening_sample"]


@dataclass
class Ready:
    """A run ready for its next step."""

    state: RunState
    step: Callable[[torch.Tensor, torch.Tensor], None]
    sums: EpochSums  # what `step` adds to
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


def make_ready(run: Run, quiet: bool) -> Ready:
    config, ctx, device, paths = run.config, run.ctx, run.device, run.paths
    ckpt = _checkpoint_to_resume(run)
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
        check_same_data(ckpt, identity, paths.checkpoint)
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
        note = state.restore(ckpt, ctx, paths.checkpoint, steps)
        run.log(note) if note else None
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
    return Ready(state, step, sums, make_pipeline(run, data, train_x, train_y, test_x, test_y), params)


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
    if distributed.restart_count():
        run.log(f"torchrun restarted the workers (restart {distributed.restart_count()}): continuing from the last "
                f"checkpoint")
    ckpt = load_checkpoint(checkpoint, config)
    if ckpt["world_size"] != ctx.world_size and ckpt["step"] != 0:
        raise UserError(f"{checkpoint} was written mid-epoch by {ckpt['world_size']} process(es): resume "
                        f"it with {ckpt['world_size']} (torchrun --nproc_per_node), or from an epoch's end", code=2)
    return ckpt


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
