"""What a finished run leaves behind (the reference implementation's results.txt line and figure, the weights,
the history as CSV and JSON), written so that a failure loses nothing; strict JSON; write failures as one line."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import resource
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from torch import nn

from ..config import TrainConfig
from ..errors import UserError
from ..files import atomic_write
from .checkpoint import save_weights
from .figures import plot_history
from .paths import RunPaths

__all__ = ["results_line", "record_checksum", "write_finished_run", "complete_finished_run", "write_record", "strict_json", "file_failure",
           "peak_rss_mb"]

RESULTS_ENTRY = "results_txt"  # in a finished run's JSON: where its results.txt line went, and the line
CHECKSUM_ENTRY = "checksum"  # in a finished run's JSON: record_checksum of its summary and history


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


def strict_json(obj: object, **kwargs: Any) -> str:
    """JSON that strict parsers accept: a non-finite float (NaN, inf) is written as null."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _finite(obj: object) -> object:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def results_line(config: TrainConfig, acc: float) -> str:
    """One line of the reference implementation's results.txt, as it writes it (`acc`: its figure, the mean of
    the test batches' accuracies)."""
    return (f"{datetime.now()} ::: [attn_ratio : {config.attn_ratio}, use_sb : {config.use_sb}, use_se : {config.use_se}, "
            f"activation : {config.activation}] --> acc : {100 * acc:.2f}%.\n")


def record_checksum(record: dict) -> str:
    """SHA-256 of a finished run's summary and history as strict, key-sorted JSON: what a run brought back from
    another machine is checked against (benchmarks/gpu.py merge) before its figures join a table."""
    body = strict_json({"summary": record.get("summary"), "history": record.get("history")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _write_history(paths: RunPaths, history: list[dict]) -> None:
    scalar_keys = [k for k in history[0] if not isinstance(history[0][k], list)] if history else []
    def write_csv(f: BinaryIO) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=scalar_keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        f.write(text.getvalue().encode())
    atomic_write(paths.history_csv, write_csv)


def write_finished_run(config: TrainConfig, paths: RunPaths, model: nn.Module, history: list[dict],
                       summary: dict, num_classes: int) -> None:
    """The finished run's files; then the JSON summary that marks it finished and its line in results.txt (once,
    see _append_result), and only then are the checkpoint and the configuration file removed (the summary holds
    the configuration). A failure keeps the checkpoint, from which --resume writes them again."""
    after = _AFTER.format(checkpoint=paths.checkpoint)
    with file_failure(paths.weights, after):
        save_weights(paths.weights, model, config, history, summary, num_classes)
    with file_failure(paths.figure, after):
        plot_history(history, paths.figure, paths.name)
    with file_failure(paths.history_csv, after):
        _write_history(paths, history)
    line = results_line(config, summary["final_eval_acc_batch_mean"])
    record = {"summary": summary, "history": history}
    _append_result(paths, {**record, CHECKSUM_ENTRY: record_checksum(record)}, line)
    _remove_run_state(paths)


_AFTER = ("the run's checkpoint {checkpoint} is kept: make room or fix the path, then run the same command with "
          "--resume to write the run's files without training again")


def complete_finished_run(paths: RunPaths) -> bool:
    """Finish what a finish killed after the JSON summary left undone (its checkpoint or configuration file is still
    there): the results.txt line appended if it is not there yet, then those files removed. True when there was
    something to finish. Only under the run's lock."""
    if not (paths.checkpoint.exists() or paths.config.exists()):
        return False
    try:
        record = json.loads(paths.summary.read_text())
    except (OSError, ValueError):
        return False
    entry = record.get(RESULTS_ENTRY) if isinstance(record, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("line"), str):  # else an earlier sbattn's: line appended
        _append_result(paths, record, entry["line"])
    _remove_run_state(paths)
    return True


def _append_result(paths: RunPaths, record: dict, line: str) -> None:
    """Write the JSON `record` that marks the run finished and append `line` to results.txt, once whatever the
    kill timing: under an exclusive lock of results.txt (other runs append to it too), the record says at which
    offset the line goes before it is appended; a record whose line is at its offset already is left as it is."""
    after, data = _AFTER.format(checkpoint=paths.checkpoint), line.encode()
    with file_failure(paths.results, after):
        fd = os.open(paths.results, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with file_failure(paths.results, after):
            fcntl.flock(fd, fcntl.LOCK_EX)
            offset = (record.get(RESULTS_ENTRY) or {}).get("offset")
            if isinstance(offset, int) and offset >= 0 and os.pread(fd, len(data), offset) == data:
                return
        with file_failure(paths.summary, after):
            write_record(paths.summary, {**record, RESULTS_ENTRY: {"offset": os.fstat(fd).st_size, "line": line}})
        with file_failure(paths.results, after):
            while data:
                data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _remove_run_state(paths: RunPaths) -> None:
    paths.checkpoint.unlink(missing_ok=True)
    paths.epoch_checkpoint.unlink(missing_ok=True)
    paths.config.unlink(missing_ok=True)


def write_record(path: Path, record: dict) -> None:
    """A JSON record of sbattn's (a run's summary, its configuration), strict and written atomically."""
    text = strict_json(record, indent=1)
    atomic_write(path, lambda f: f.write(text.encode()))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
