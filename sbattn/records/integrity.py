"""What makes a checkpoint or weights file trusted before use: a checksum of all it holds, a container whose
tensors cannot grow when read, every field checked for type and range, weights that fit their model (checked
on the meta device, before the model is built), and a resumed run's data that is the data it trained on."""
from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from ..errors import CheckpointError

if TYPE_CHECKING:
    from ..data.dataset import CIFAR10

__all__ = ["seal", "verify_checksum", "check_container", "check_tensors", "check_weights_fit", "entry_ok", "is_count", "is_number", "data_identity", "check_same_data"]


def checksum(record: dict) -> str:
    """A digest of everything in a record but its checksum: tensors by their bytes, other values by their type and
    value, in the record's order (which a saved dict keeps)."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, {k: v for k, v in record.items() if k != "checksum"})
    return h.hexdigest()


def _feed(h: hashlib.blake2b, obj: object) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for value in obj:
            _feed(h, value)
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()};".encode())
    else:
        h.update(f"{type(obj).__name__}{obj!r};".encode())


def seal(record: dict) -> dict:
    """The record with its checksum."""
    return {**record, "checksum": checksum(record)}


def verify_checksum(record: dict, path: Path, required: bool = True) -> None:
    """Refuse a record whose contents are not what was saved; files of earlier formats carry no checksum (required:
    the record's format always has one, so a record without it was stripped of it)."""
    if "checksum" not in record:
        if required:
            raise CheckpointError(f"{path} has no checksum, which every file of its format {record.get('format')!r} "
                                  f"carries: it was edited or damaged; restore it from a copy, or move it away")
        return
    if record["checksum"] != checksum(record):
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum saved with them; "
                              f"restore it from a copy, or move it away")


def check_container(path: Path) -> None:
    """Before torch.load reads it: a regular file, whose entries are stored as torch.save stores them, so that
    reading it never needs more memory than its size (a compressed entry could unpack to any size)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (give the .pth or .ckpt that training wrote)")
    try:
        with zipfile.ZipFile(path) as z:
            packed = [i.filename for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError):
        return  # not a zip: torch.load tells what it is
    if packed:
        raise CheckpointError(f"{path} holds compressed entries ({packed[0]}), which torch.save never writes: it "
                              f"is not a file sbattn wrote; refusing to unpack it")


def check_tensors(record: object, path: Path) -> None:
    """Before any tensor of a record read from `path` is touched: each claims no more bytes than its storage holds,
    and its storage no more than the file, so that checking or hashing it allocates no more than the file's size (a
    stride-0 view, torch.zeros(1).expand(n), claims n elements of a storage of one)."""
    size = path.stat().st_size
    for name, t in _tensors(record, ""):
        if t.is_conj() or t.is_neg():  # lazy views torch.save keeps and sbattn never makes: no bytes to hash as is
            raise CheckpointError(f"{path}: {name} is a conjugate or negative view, which sbattn never writes: not "
                                  f"a file sbattn wrote; refusing to read it")
        held = t.untyped_storage().nbytes() if t.layout == torch.strided else -1  # -1: sparse, no one storage
        if not 0 <= t.numel() * t.element_size() <= held <= size:
            raise CheckpointError(f"{path}: {name}, a {tuple(t.shape)} {t.dtype} tensor, claims "
                                  f"{t.numel() * t.element_size():,} bytes of a storage of {max(held, 0):,} (the "
                                  f"file has {size:,}): not a file sbattn wrote; refusing to read it")


def _tensors(obj: object, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(where, tensor) for every tensor in a record, in its dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield name or "a tensor", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{name}.{key}" if name else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{name}[{i}]")


def check_weights_fit(model: nn.Module, state: object, path: Path, what: str = "its model") -> None:
    """A state dict read from a file against the model it is for (built on the meta device, so that a file
    claiming a huge model allocates nothing): the same names, shapes and dtypes, and finite values."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: its weights are not a state dict of tensors; the file is damaged")
    expected = model.state_dict()
    problems = ([f"{k} missing" for k in expected if k not in state]
                + [f"{k} unexpected" for k in state if k not in expected]
                + [f"{k} is {tuple(state[k].shape)} {state[k].dtype}, the model's is {tuple(v.shape)} {v.dtype}"
                   for k, v in expected.items() if k in state
                   and (state[k].shape != v.shape or state[k].dtype != v.dtype)])
    if problems:
        raise CheckpointError(f"{path}: its weights do not fit {what} ({len(problems)} problem(s), first: "
                              f"{problems[0]}); it is damaged or from another model")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{path}: {bad} holds non-finite values (NaN or inf); the file is damaged")


def is_count(value: object, low: int = 0, high: float = math.inf) -> bool:
    """An int (not a bool) from `low` to `high`."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_number(value: object, low: float = -math.inf, high: float = math.inf) -> bool:
    """A finite int or float (not a bool) from `low` to `high`, or a one-element tensor holding one (--compile step
    keeps the learning rate in a tensor)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return False
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and low <= value <= high
    except OverflowError:  # an integer past any float
        return False


HISTORY_NUMBERS = ("lr", "train_loss", "train_acc", "seconds")  # what every history entry holds as a number
# What an entry may hold as a number or None: the evaluation (not every epoch evaluates), the reference
# implementation's figures (entries of 0.2 and earlier have none).
OPTIONAL_NUMBERS = ("eval_loss", "eval_acc", "train_loss_sampled", "train_acc_sampled", "eval_loss_batch_mean",
                    "eval_acc_batch_mean")
ACCURACIES = ("train_acc", "eval_acc", "train_acc_sampled", "eval_acc_batch_mean")


def entry_ok(entry: object, epoch: int) -> bool:
    """A history entry of epoch `epoch` (a checkpoint's or a finished run's): its numbers, accuracies from 0 to 1."""
    return (isinstance(entry, dict) and is_count(entry.get("epoch")) and entry["epoch"] == epoch
            and all(is_number(entry.get(k)) for k in HISTORY_NUMBERS)
            and all(entry.get(k) is None or is_number(entry.get(k)) for k in OPTIONAL_NUMBERS)
            and all(entry.get(k) is None or 0 <= entry[k] <= 1 for k in ACCURACIES))


def data_identity(data: CIFAR10) -> dict:
    """What a checkpoint records of the data it trains on."""
    return {"source": data.source, "classes": list(data.classes), "fingerprint": data.fingerprint()}


def check_same_data(ckpt: dict, identity: dict, path: Path) -> None:
    """A resumed run trains on its checkpoint's data: the same classes, the same images (checkpoints of earlier
    versions record only the number of classes)."""
    saved = ckpt.get("data")
    if not isinstance(saved, dict):
        if ckpt["num_classes"] != len(identity["classes"]):
            raise CheckpointError(f"{path} was trained on {ckpt['num_classes']} classes, {identity['source']} has "
                                  f"{len(identity['classes'])}: resume it with the --data-dir it was trained on")
        return
    if saved.get("classes") != identity["classes"]:
        raise CheckpointError(f"{path} was trained on the classes {_names(saved.get('classes'))}, "
                              f"{identity['source']} has {_names(identity['classes'])}: resume it with the "
                              f"--data-dir it was trained on, or move it away to start over")
    if saved.get("fingerprint") != identity["fingerprint"]:
        raise CheckpointError(f"{path} was trained on other data ({saved.get('source')}) than {identity['source']}: "
                              f"resume it with the --data-dir it was trained on, or move it away to start over")


def _names(classes: object) -> str:
    if not isinstance(classes, list):
        return repr(classes)
    shown = ", ".join(map(str, classes[:5]))
    return f"[{shown}{', ...' if len(classes) > 5 else ''}] ({len(classes)})"
