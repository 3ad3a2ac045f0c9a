"""The memory layout a run trains in, chosen by the machine: measured once per machine and model, then cached.

Which layout oneDNN's kernels run fastest depends on the CPU (AVX-512 or AMX), the model and the precision.
On a CPU, `--layout auto` times a few training steps of the run's own model in each layout, interleaved, and
keeps the faster; the result is cached (tuning.json in the cache directory) under the CPU's model, the PyTorch
version, the model, the batch size, the precision and the threads, so the measurement is paid once. On CUDA
channels-last is the measured rule. The choice, and how it was made, goes into the run's history.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LAYOUTS, TrainConfig
from ..data import default_cache_dir
from ..data.limits import read_regular
from ..errors import DataError, UserError
from ..files import atomic_write
from ..models import create_model
from ..system import cpu_model
from .evaluation import memory_format
from .step import EpochSums, train_step

MAX_TUNING_BYTES = 1 << 20  # the cache of layout measurements: a few hundred bytes a model

__all__ = ["LayoutChoice", "choose_layout", "layout_name"]
WARMUP, TIMED, ROUNDS = 2, 3, 2  # steps per layout and round; rounds alternate the layouts


@dataclass(frozen=True)
class LayoutChoice:
    layout: str  # a key of LAYOUTS
    how: str  # "given", "rule", "fp32 rule", "measured" or "cached"
    step_seconds: dict | None = None  # per layout, when measured

    @property
    def memory_format(self) -> torch.memory_format:
        return LAYOUTS[self.layout]


def layout_name(fmt: torch.memory_format) -> str:
    return next(name for name, f in LAYOUTS.items() if f == fmt)


def choose_layout(config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
                  num_classes: int = 10) -> LayoutChoice:
    """The layout `config.layout` names; in fp32 on a CPU contiguous, whose gradients stay within fp32's rounding
    of float64's where channels-last's do not (docs/fp32.md); else the one measured fastest on this CPU, else the
    device's rule."""
    if config.layout != "auto":
        return LayoutChoice(config.layout, "given")
    if device.type == "cpu" and amp_dtype is None:
        return LayoutChoice("contiguous", "fp32 rule")
    if device.type != "cpu":
        return LayoutChoice(layout_name(memory_format(device)), "rule")
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()  # `~` expanded by validation
    key = json.dumps([cpu_model(), platform.machine(), torch.__version__, config.arch, config.attention,
                      config.width, config.placement, config.batch_size, str(amp_dtype), torch.get_num_threads()])
    known = _read(cache / "tuning.json")
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("layout") in LAYOUTS and isinstance(entry.get("step_seconds"), dict):
        return LayoutChoice(entry["layout"], "cached", entry["step_seconds"])  # anything else: measured again
    times = _measure(config, device, amp_dtype, num_classes)
    choice = LayoutChoice(min(times, key=times.__getitem__), "measured", times)
    _write(cache / "tuning.json", {**known, key: {"layout": choice.layout, "step_seconds": times}})
    return choice


def _measure(config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
             num_classes: int) -> dict[str, float]:
    """Median seconds per training step of the run's model in each layout, on random data; the run's random
    streams are left as they were."""
    with torch.random.fork_rng(devices=[]):
        model = create_model(config.arch, num_classes=num_classes, **config.model_options()).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
        x = torch.randn(config.batch_size, 3, 32, 32, device=device)
        y = torch.randint(0, num_classes, (config.batch_size,), device=device)
        sums = EpochSums.zeros(device, config.batch_size, config.batch_size)
        times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        for _ in range(ROUNDS):
            for name, fmt in LAYOUTS.items():
                # Module.to takes memory_format=; torch's overloads of it omit that.
                model = model.to(memory_format=fmt)  # type: ignore[call-overload]
                xf = x.contiguous(memory_format=fmt)
                for i in range(WARMUP + TIMED):
                    started = time.perf_counter()
                    optimizer.zero_grad(set_to_none=True)
                    train_step(model, optimizer, None, amp_dtype, sums, xf, y)
                    if i >= WARMUP:
                        times[name].append(time.perf_counter() - started)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _read(path: Path) -> dict:
    """The cache's measurements; an unreadable, oversized, poisoned file (or a FIFO there, never waited on) is
    no cache."""
    try:
        data = json.loads(read_regular(path, MAX_TUNING_BYTES, "tuning cache"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError, DataError):
        return {}


def _write(path: Path, data: dict) -> None:
    try:  # a cache: failing to write it costs a measurement next time, nothing more
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(json.dumps(data, indent=1).encode()))
    except (OSError, UserError):  # UserError: something not a regular file where it goes
        pass
