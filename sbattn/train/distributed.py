"""torchrun support: one process per device, DistributedDataParallel, NCCL on CUDA and gloo on the CPU.

Launched by torchrun, a process finds RANK, WORLD_SIZE and LOCAL_RANK in its environment; launched plainly, it
is rank 0 of 1 and nothing here does anything.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, NoReturn, Protocol, TypedDict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .process import follow_agent, remember_launch

__all__ = ["Context", "setup", "teardown", "joined", "leave", "restart_count", "disagreement", "all_reduce_sum",
           "any_rank", "gather_objects", "wrap", "sync_batchnorm", "rank_ordered_mean", "CrossRankBatchNorm",
           "lost_peer", "one_report", "entering", "passing", "unanswered"]

# Where this rank is, for the error that names a rank that stopped answering: the collective it is in, and the
# last point every rank reports to the store (every few steps, see `passing`).
class _Where(TypedDict, total=False):
    collective: str
    at: tuple[int, int]  # (epoch, step)


_where: _Where = {"collective": "the start of the process group"}
_joined = False  # whether this process joined a process group (setup): it then ends through `leave`
# This group's keys in its store (which is the group's own: see `setup`).
_KEY = "sbattn"


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str, timeout: float) -> tuple[Context, str]:
    """Join the process group torchrun set up, if any, whose collectives fail after `timeout` seconds without
    every rank (a rank that died or hung); returns the context and this rank's device.

    Under torchrun (one process or several) this process stops when its agent dies (see process.py), and reads the
    agent's command line while it lives: the resume command it prints after that stop is the user's own launch."""
    if follow_agent() is not None:
        remember_launch()
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return Context(), device
    ctx = Context(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", 0)))
    if torch.device(device).type == "cuda":
        device = f"cuda:{ctx.local_rank}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        global _joined
        _joined = True
        limit = timedelta(seconds=timeout)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=limit))
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps its store through the restarts of --max-restarts: each attempt's keys apart, or
            # a restarted group reads the dead attempt's addresses and cannot connect. Otherwise (a rendezvous
            # with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, a plain launch) each round's rank 0 hosts a store of its
            # own: no prefix, for the agents' counts differ once nodes have joined or left, and every rank of a
            # round must name the same keys.
            store = dist.PrefixStore(f"sbattn/attempt_{restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=limit)
    return ctx, device


def restart_count() -> int:
    """How many times torchrun's agent has restarted this job's workers (--max-restarts); 0 outside torchrun."""
    try:
        return max(0, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    except ValueError:
        return 0


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def joined() -> bool:
    return _joined  # this process joined a torchrun process group, and must end through `leave`


def leave(code: int) -> NoReturn:
    """End this process with `code` after its atexit handlers and a flush, skipping Python's finalization: gloo's
    worker threads outlive destroy_process_group while DDP holds the group, and one still releasing the last
    collective's tensors then aborts a finished run (SIGABRT; 1 two-process run in 10 on loaded cores)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# What gloo and NCCL say when the process at the other end of a collective has gone or does not answer.
_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out", "timeout",
              "socket closed", "nccl communicator was aborted")
REPORT_WAIT = timedelta(seconds=5)  # how long another rank waits to learn whether rank 0 reports the same error
REPORT_GRACE = timedelta(seconds=1)


def lost_peer(error: BaseException) -> bool:
    """An error of a collective whose peer process died, hung or was cut off (not a bug of this process)."""
    backend_error = getattr(dist, "DistBackendError", ())
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (isinstance(error, backend_error) or any(s in text for s in _PEER_LOST))


def one_report(ctx: Context, message: str, consequence: bool = False) -> bool:
    """Whether this rank should print its error `message`, so that an error every rank hits is printed once: rank 0
    always (and tells the others, through the process group's store); another rank when rank 0 reports no error
    within REPORT_WAIT or a different one, unless its own is the consequence of rank 0's (a lost peer)."""
    if not ctx.distributed:
        return True
    key = f"{_KEY}/error"
    try:
        store = dist.distributed_c10d._get_default_store()
        if ctx.main:
            store.set(key, message)
            return True
        store.wait([key], REPORT_WAIT)
        theirs = store.get(key).decode(errors="replace")
    except Exception:  # no store, rank 0 gone with it, or no report in time: this rank speaks for itself
        return True
    if consequence or theirs == message:
        time.sleep(REPORT_GRACE.total_seconds())  # torchrun stops the others when one exits: let rank 0 print first
        return False
    return True


def entering(collective: str) -> None:
    """Say which collective this rank waits in next (the training steps' gradient all-reduce, ...)."""
    _where["collective"] = collective


def passing(ctx: Context, epoch: int, step: int) -> None:
    """Tell the store where this rank is (every few steps), so that a rank whose peer stops answering can name it."""
    if ctx.distributed:
        with _store() as store:
            store.set(f"{_KEY}/at/{ctx.rank}", f"{epoch} {step}")
    _where["at"] = (epoch, step)


def unanswered(ctx: Context, error: BaseException) -> str:
    """The one line for a collective that failed because a peer died or hung: which collective, and which rank(s)
    did not answer, with where each was last seen. Every rank whose collective failed says so in the store; those
    that have not said so within ANSWER_WAIT are the ones that stopped."""
    mine, silent = _where.get("at", (0, 0)), []
    with _store() as store:
        store.set(f"{_KEY}/failed/{ctx.rank}", "1")
        others = [r for r in range(ctx.world_size) if r != ctx.rank]
        deadline = time.monotonic() + ANSWER_WAIT
        while time.monotonic() < deadline and not all(store.check([f"{_KEY}/failed/{r}"]) for r in others):
            time.sleep(0.1)
        for rank in (r for r in others if not store.check([f"{_KEY}/failed/{r}"])):
            key = f"{_KEY}/at/{rank}"
            seen = tuple(map(int, store.get(key).split())) if store.check([key]) else None
            where = "never seen" if seen is None else f"last seen at epoch {seen[0] + 1}, step {seen[1]}"
            silent.append(f"rank {rank} ({where})")
    first = (str(error).splitlines() or [type(error).__name__])[0][:160]
    return (f"rank {ctx.rank}: {', '.join(silent) or 'another rank'} did not answer in {_where['collective']} at "
            f"epoch {mine[0] + 1}, step {mine[1]} ({first}); the last good checkpoint is kept: resume when every rank "
            f"can run")


ANSWER_WAIT = 2.0  # seconds: how long a failed rank waits to hear which of the others failed too


class _Store(Protocol):
    """What these messages ask of a store: torch's (c10d.Store), or _NoStore."""

    def set(self, key: str, value: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def check(self, keys: list[str]) -> bool: ...


@contextlib.contextmanager
def _store() -> Iterator[_Store]:
    """The process group's store, or a stand-in that knows nothing when it cannot be reached (the agent gone); an
    error of the store's ends the block quietly: what it was for is only a better message."""
    store: _Store
    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:
        store = _NoStore()
    try:
        yield store
    except Exception:
        pass


class _NoStore:
    def set(self, key: str, value: str) -> None:
        pass

    def check(self, keys: list[str]) -> bool:
        return False

    def get(self, key: str) -> bytes:  # never asked: it holds no key (check says so)
        raise KeyError(key)


def all_reduce_sum(ctx: Context, *values: torch.Tensor) -> list[torch.Tensor]:
    """The sums over ranks of scalar tensors of one dtype, in one collective."""
    stacked = torch.stack(values)
    if ctx.distributed:
        _where["collective"] = "the epoch's sums (all_reduce)"
        dist.all_reduce(stacked)
    return list(stacked.unbind())


def any_rank(ctx: Context, flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any: so that all ranks stop at the same step."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([int(flag)], device=device)
    _where["collective"] = "the ranks' stop check (all_reduce)"
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(ctx: Context, obj: Any) -> list[Any]:
    """Every rank's `obj`, as a list indexed by rank (on every rank)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    _where["collective"] = "gathering the ranks' states (all_gather_object)"
    dist.all_gather_object(out, obj)
    return out


def disagreement(ctx: Context, facts: dict[str, Any]) -> str | None:
    """Where the ranks' `facts` (what must be the same on every rank: the recipe, the data, the version) differ
    from rank 0's, said in one line, the same on every rank; None when they agree. A collective."""
    every = gather_objects(ctx, facts)
    for rank, theirs in enumerate(every[1:], start=1):
        keys = [k for k in every[0] if theirs.get(k) != every[0][k]]
        if keys:
            shown = "; ".join(f"{k} {theirs.get(k)!r} there, {every[0][k]!r} on rank 0" for k in keys[:3])
            return (f"rank {rank} was started differently from rank 0 ({shown}): start every rank with the same "
                    f"command, sbattn version and data")
    return None


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every rank's loss depends on every rank's sum."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossRankBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, summed over ranks.

    nn.SyncBatchNorm does this on CUDA only; this one works with gloo on the CPU. The all-reduce is
    differentiable, so the gradient through the statistics is the global batch's too.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {x.dim()}")

    def _average_factor(self) -> float:
        """Counts this batch; the running statistics' update factor, as torch's BatchNorm takes it: momentum, or
        with momentum None the cumulative average's 1 / batches."""
        if self.num_batches_tracked is not None:
            self.num_batches_tracked += 1
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        channels, dims = x.shape[1], [0, *range(2, x.dim())]
        xf = x.float()
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), xf.new_tensor([x.numel() / channels])])
        total = _SumOverRanks.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = total[channels:2 * channels] / count - mean * mean
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                factor = self._average_factor()
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * count / (count - 1), factor)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm (the attention branch's BatchNorm1d too) computing global-batch statistics."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, CrossRankBatchNorm):
            new = CrossRankBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats).to(device)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device)
    return model


def wrap(ctx: Context, model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """DistributedDataParallel around `model`, its BatchNorm layers synchronised across ranks if asked."""
    if not ctx.distributed:
        return model
    if sync_bn:
        model = sync_batchnorm(model, device)
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    ddp.register_comm_hook(None, rank_ordered_mean)
    return ddp


def rank_ordered_mean(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's gradient averaging, each element summed in rank order. An all-reduce sums an element in an order that
    depends on where the element sits in its bucket; DDP lays its buckets out afresh after its first step, so a
    run resumed in a new process (whose first step uses the first layout again) drifted from the run never stopped
    beyond two ranks (1e-4 in the weights at four). Gathered, then summed rank by rank, an element's mean is the
    same whatever the layout: a resumed run equals the uninterrupted one at any world size."""
    grads = bucket.buffer()
    parts = [torch.empty_like(grads) for _ in range(dist.get_world_size())]
    gathered = dist.all_gather(parts, grads, async_op=True)
    assert gathered is not None

    def mean(_: torch.futures.Future[Any]) -> torch.Tensor:
        total = parts[0].clone()
        for part in parts[1:]:
            total += part
        return grads.copy_(total.div_(len(parts)))

    return gathered.get_future().then(mean)


# DDP checks a hook's annotations against the classes themselves; this module's are strings (PEP 563)
rank_ordered_mean.__annotations__.update(bucket=dist.GradBucket, **{"return": torch.futures.Future[torch.Tensor]})
