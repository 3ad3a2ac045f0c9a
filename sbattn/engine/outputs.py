"""A run's files: where they go, the per-epoch line, and what a finished run leaves behind (the reference
implementation's results.txt line and figure, the weights, the history as CSV and JSON)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import resource
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from torch import nn

from ..errors import UserError
from ..files import atomic_write
from ..nn import ShiftBalance
from .checkpoint import save_weights
from .config import TrainConfig
from .figures import plot_history

__all__ = ["RunPaths", "prepare_output_dir", "results_line", "format_epoch", "lambda_stats", "write_finished_run",
           "strict_json", "file_failure"]

RESULTS = "results.txt"  # the reference implementation's one line per finished run


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

    @property
    def results(self) -> Path:
        return self.output_dir / RESULTS


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output directory and prove it and its results.txt writable before any training is spent."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror or e}); "
                        f"choose another with --output-dir", code=2) from None
    _check_appendable(out / RESULTS)
    return out


def _check_appendable(path: Path) -> None:
    """A file to append to at the end of the run: absent, or a regular file this process may write."""
    if not os.path.lexists(path):
        return
    if not path.is_file():
        raise UserError(f"{path} is not a regular file, and the run appends its result line to it: move it away",
                        code=2)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise UserError(f"{path} is not writable ({e.strerror or e}), and the run appends its result line to it: "
                        f"make it writable or choose another --output-dir", code=2) from None


@contextlib.contextmanager
def file_failure(path: Path, after: str) -> Iterator[None]:
    """Turn a file-system failure writing `path` (a full disk, a read-only file system, a directory in the way)
    into one line saying what was kept and what to do (`after`)."""
    try:
        yield
    except OSError as e:
        where = e.filename2 or e.filename or path  # a rename's target, else the file that failed
        if str(where).endswith(".tmp") and Path(where).name.startswith("."):  # atomic_write's temporary file
            where = path
        raise UserError(f"cannot write {where} ({e.strerror or e}); {after}") from None


def strict_json(obj, **kwargs) -> str:
    """JSON that strict parsers accept: a non-finite float (NaN, inf) is written as null."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def results_line(config: TrainConfig, acc: float) -> str:
    """One line of the reference implementation's results.txt."""
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return (f"{stamp} ::: [attn_ratio : {config.attn_ratio}, use_sb : {config.use_sb}, use_se : {config.use_se}, "
            f"activation : {config.activation}] --> acc : {100 * acc:.2f}%.\n")


def format_epoch(e: dict, epochs: int, best: bool) -> str:
    line = (f"epoch {e['epoch']:>3}/{epochs}  lr {e['lr']:.4g}  train loss {e['train_loss']:.4f} "
            f"acc {100 * e['train_acc']:.2f}%")
    if e["eval_acc"] is not None:
        line += f"  eval loss {e['eval_loss']:.4f} acc {100 * e['eval_acc']:.2f}%{' (best)' if best else ''}"
    return line + f"  {e['seconds']:.1f}s  {e['images_per_sec']:.0f} img/s"


def lambda_stats(model: nn.Module) -> dict[str, list[float]]:
    """Per SB block: mean and standard deviation of |lambda|."""
    lams = [m.lam.detach().abs().float() for m in model.modules() if isinstance(m, ShiftBalance)]
    if not lams:
        return {}
    return {"lambda_abs_mean": [l.mean().item() for l in lams], "lambda_abs_std": [l.std().item() for l in lams]}


def _write_history(paths: RunPaths, history: list[dict]) -> None:
    scalar_keys = [k for k in history[0] if not isinstance(history[0][k], list)] if history else []
    def write_csv(f):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=scalar_keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        f.write(text.getvalue().encode())
    atomic_write(paths.with_suffix(".csv"), write_csv)


def write_finished_run(config: TrainConfig, paths: RunPaths, model: nn.Module, history: list[dict],
                       summary: dict, num_classes: int) -> None:
    """The finished run's files and its line in results.txt; then the JSON summary that marks it finished, and
    only then is the checkpoint removed. A failure keeps the checkpoint, from which --resume writes them again."""
    after = (f"the run's checkpoint {paths.checkpoint} is kept: make room or fix the path, then run the same "
             f"command with --resume to write the run's files without training again")
    with file_failure(paths.with_suffix(".pth"), after):
        save_weights(paths.with_suffix(".pth"), model, config, history, summary, num_classes)
    with file_failure(paths.with_suffix(".png"), after):
        plot_history(history, paths.with_suffix(".png"), paths.name)
    with file_failure(paths.with_suffix(".csv"), after):
        _write_history(paths, history)
    with file_failure(paths.results, after), open(paths.results, "a") as f:
        f.write(results_line(config, summary["final_eval_acc"]))
    record = strict_json({"summary": summary, "history": history}, indent=1)
    with file_failure(paths.summary, after):
        atomic_write(paths.summary, lambda f: f.write(record.encode()))
    paths.checkpoint.unlink(missing_ok=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
