"""The official python batches, parsed with the restricted unpickler: read from a folder or from the
(verified) official archive, or unpacked from that archive."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .archives import _read_archive
from .dataset import BATCHES_DIR, CIFAR10, CLASSES, META, TEST_BATCH, TRAIN_BATCHES
from .limits import MAX_ENTRY_BYTES, read_regular
from .safe_pickle import _unpickle


def _str_keys(obj: object, where: str) -> dict[str, object]:
    if not isinstance(obj, dict):
        raise DataError(f"{where} holds a {type(obj).__name__}, not a CIFAR-10 batch dict; "
                        "replace the file (--download)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _parse_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(_unpickle(blob, where), where)
    if "data" not in d or "labels" not in d:
        raise DataError(f"{where} has no 'data' or 'labels' entry, so it is not a CIFAR-10 batch; "
                        "replace it (--download)")
    data = d["data"]
    try:
        labels = np.asarray(d["labels"])
    except (ValueError, TypeError, RecursionError):  # ragged, or nested past numpy's dimensions or the stack
        raise DataError(f"{where}: 'labels' is not a list of integers (ragged or nested); replace the file "
                        f"(--download)") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = data.shape if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' has shape {shape}, expected (N, 3072) uint8; replace the file (--download)")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: 'labels' has shape {labels.shape} ({labels.dtype}), expected {len(data)} integers; "
                        "replace the file (--download)")
    bad = labels[(labels < 0) | (labels > 9)]
    if len(bad):
        raise DataError(f"{where}: labels outside 0..9 (e.g. {bad[0]}); replace the file (--download)")
    # Rows are 1024 red, then green, then blue values; NHWC is what image folders give too.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _parse_meta(blob: bytes, where: str) -> list[str]:
    names = _str_keys(_unpickle(blob, where), where).get("label_names")
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{where} has no list of 10 'label_names'; replace it (--download)")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _batches_from(files: dict[str, bytes], where: str, source: str) -> CIFAR10:
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in files]
    if missing:
        raise DataError(f"{where} is incomplete: {', '.join(missing)} missing; "
                        "delete it and run again with --download, or restore the files")
    train = [_parse_batch(files[n], f"{where}/{n}") for n in TRAIN_BATCHES]
    test_x, test_y = _parse_batch(files[TEST_BATCH], f"{where}/{TEST_BATCH}")
    classes = _parse_meta(files[META], f"{where}/{META}") if META in files else list(CLASSES)
    return CIFAR10(
        np.ascontiguousarray(np.concatenate([x for x, _ in train])), np.concatenate([y for _, y in train]),
        np.ascontiguousarray(test_x), test_y, classes, source,
    )


def _load_batches(path: Path) -> CIFAR10:
    files = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        try:
            files[name] = read_regular(path / name, MAX_ENTRY_BYTES, "batch file")
        except FileNotFoundError:
            pass
        except OSError as e:
            raise DataError(f"cannot read {path / name}: {e.strerror or e}; "
                            "check the file and its permissions") from None
    return _batches_from(files, str(path), f"official CIFAR-10 batches at {path}")


def _read_official_archive(path: Path) -> dict[str, bytes]:
    """The batch files of a (verified) official archive, by base name."""
    wanted = {f"{BATCHES_DIR}/{n}" for n in (*TRAIN_BATCHES, TEST_BATCH, META)}
    arc = _read_archive(path, lambda name: name in wanted)
    return {name.split("/", 1)[1]: blob for name, blob in arc.files.items()}


def _unpack_official(archive: Path, root: Path) -> Path:
    """Unpack the verified official archive into root/cifar-10-batches-py via a temporary directory."""
    dest = root / BATCHES_DIR
    files = _read_official_archive(archive)
    _batches_from(files, f"{archive}:{BATCHES_DIR}", "")  # check it all before anything lands in place
    tmp = Path(tempfile.mkdtemp(prefix=f".{BATCHES_DIR}-", dir=root))
    try:
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
        tmp.chmod(0o755)
        os.rename(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot unpack {archive} into {dest}: {e.strerror or e}; "
                        "check the folder's permissions and free space") from None
    return dest
