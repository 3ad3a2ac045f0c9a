"""A trained model outside training: ONNX and torch.export files, test accuracy, predictions for image files.

The command line's `sbattn export`, `sbattn evaluate` and `sbattn predict` are built on these. Exported models take
normalised float images (N, 3, 32, 32), (x / 255 - 0.5) / 0.5 as in training, and return logits (N, classes),
for any batch size N. An ONNX file says so itself: its metadata holds the normalisation, and, exported from a
run's file, the class names and the run's configuration. Exports are written atomically: a failure leaves the
earlier file in place.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data import CLASSES, load_fake, normalize, to_device_uint8
from .data.limits import MAX_IMAGE_BYTES, open_image, read_regular
from .errors import DataError, UserError
from .files import atomic_path, atomic_write
from .records.checkpoint import read_record
from .version import __version__

__all__ = ["FORMATS", "PREDICT_BATCH", "EXPORT_INSTALL", "NORMALIZATION", "export_onnx", "export_program",
           "export_metadata", "class_names", "trained_classes", "read_images", "predict"]

IMAGE_SHAPE = (3, 32, 32)
PREDICT_BATCH = 256  # images read, decoded and classified at a time by `sbattn predict`
FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
EXPORT_INSTALL = 'pip install "sbattn[export]"'
# What an exported model's input is, for a consumer that has not read this project's code (data.normalize).
NORMALIZATION = {"input": "images", "dtype": "float32", "layout": "NCHW", "channels": "RGB", "size": [32, 32],
                 "divide_by": 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                 "formula": "(pixel / 255 - mean) / std, per channel"}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' notes that concern their own internals (missing torchvision ops, deprecations)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding")  # option A's strided slice
            yield
    finally:
        logger.setLevel(level)


def _example(model: nn.Module, batch: int = 2) -> torch.Tensor:
    like = next(model.parameters(), None)
    device = like.device if like is not None else "cpu"
    # A batch of 2, not 1: exporters specialise a dimension of size 1 to a constant.
    return torch.randn(batch, *IMAGE_SHAPE, device=device)


def export_onnx(model: nn.Module, path: str | Path, batch_dynamic: bool = True, dynamo: bool | None = None,
                opset_version: int | None = None, metadata: dict[str, Any] | None = None,
                external_data: bool | None = None) -> Path:
    """Write `model` (in eval mode) to an ONNX file, input "images" (N, 3, 32, 32), output "logits".

    dynamo: the torch.export-based exporter (None: when onnxscript is installed, else the TorchScript one).
    batch_dynamic: N is a symbolic dimension "batch"; otherwise it is fixed to 2.
    metadata: more entries for the file's metadata (values other than text as JSON), beside "normalization".
    external_data: the weights in <path>.data beside the file (dynamo only; None: when ONNX's 2 GB limit needs it).
    """
    if importlib.util.find_spec("onnx") is None:
        raise UserError(f"ONNX export needs the onnx package, which is not installed: {EXPORT_INSTALL}")
    path = Path(path)
    if dynamo is None:
        dynamo = importlib.util.find_spec("onnxscript") is not None
    model = copy.deepcopy(model).eval()
    x = _example(model)
    if external_data is None:
        external_data = sum(p.numel() * p.element_size() for p in model.parameters()) >= 2**31 - 2**26
    with atomic_path(path) as staged, _quiet_exporter(), torch.no_grad():
        if dynamo:
            shapes = ({0: torch.export.Dim("batch", min=1)},) if batch_dynamic else None
            torch.onnx.export(model, (x,), str(staged), dynamo=True, input_names=["images"], output_names=["logits"],
                              dynamic_shapes=shapes, external_data=external_data, opset_version=opset_version,
                              verbose=False)
        else:
            axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if batch_dynamic else None
            torch.onnx.export(model, (x,), str(staged), dynamo=False, input_names=["images"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=opset_version or 17)
        _add_onnx_metadata(staged, {"normalization": NORMALIZATION, **(metadata or {})})
    return path


def _add_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Add metadata_props to an ONNX file; its external data, if any, stays where it is."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(path))


def export_metadata(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """What an ONNX export of the model in run file `path` says about itself besides its normalisation."""
    obj = read_record(Path(path))
    names = _class_names(obj, obj.get("num_classes", 10))
    return {"class_names": names, "config": obj.get("config") or {}, "sbattn_version": __version__}


def export_program(model: nn.Module, path: str | Path, batch_dynamic: bool = True) -> Path:
    """Write `model` (in eval mode) as a torch.export program (.pt2); load with torch.export.load(path).module()."""
    path = Path(path)
    model = copy.deepcopy(model).eval()
    shapes = ({0: torch.export.Dim("batch", min=1)},) if batch_dynamic else None
    with _quiet_exporter(), torch.no_grad():
        program = torch.export.export(model, (_example(model),), dynamic_shapes=shapes)
    # Into memory first: torch.export.save aborts the whole process when a write to a file fails (a full disk).
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    return path


def class_names(path: str | Path, num_classes: int) -> list[str]:
    """The class names a checkpoint records, else those of its dataset, else the CIFAR-10 names."""
    return _class_names(read_record(Path(path)), num_classes)


def trained_classes(path: str | Path) -> list[str] | None:
    """The class names a checkpoint records (its training data's), or None when it records none."""
    return _recorded_classes(read_record(Path(path)))


def _recorded_classes(obj: dict) -> list[str] | None:
    def entry(name: str) -> dict:  # a file of unknown origin may hold anything under any name
        return obj[name] if isinstance(obj.get(name), dict) else {}
    recorded = (entry("summary").get("classes"), entry("data").get("classes"), obj.get("classes"))
    names = next((n for n in recorded if isinstance(n, list) and n), None)
    return None if names is None else [str(n) for n in names]


def _class_names(obj: dict, num_classes: int) -> list[str]:
    names = _recorded_classes(obj)
    if names is None:
        config = obj.get("config")
        fake = isinstance(config, dict) and config.get("dataset") == "fake"
        names = load_fake(1, 1).classes if fake else list(CLASSES)
    return names if len(names) == num_classes else [f"class {i}" for i in range(num_classes)]


def read_images(paths: Sequence[str | Path], resize: bool = False) -> np.ndarray:
    """Image files -> uint8 (N, 32, 32, 3) RGB; other sizes need resize=True (bilinear). A file that is no regular
    file, larger than MAX_IMAGE_BYTES or than MAX_IMAGE_PIXELS is refused before it is decoded."""
    out = np.empty((len(paths), IMAGE_SHAPE[1], IMAGE_SHAPE[2], 3), np.uint8)
    for i, path in enumerate(paths):
        try:
            with open_image(read_regular(path, MAX_IMAGE_BYTES, "image"), str(path)) as im:
                rgb = im.convert("RGB")
        except DataError as e:  # not a regular file, too large
            raise UserError(str(e), 2) from None
        except Exception as e:  # missing, unreadable, not an image, or damaged: Pillow's decoders raise OSError,
            # ValueError, NotImplementedError, ... (a PPM's bad maxval, a truncated QOI), as training's decode sees
            raise UserError(f"cannot read image {path} ({type(e).__name__}: {e})", 2) from None
        if rgb.size != (IMAGE_SHAPE[2], IMAGE_SHAPE[1]):
            if not resize:
                raise UserError(f"image {path} is {rgb.size[0]}x{rgb.size[1]}; the model takes 32x32 images "
                                f"(pass --resize to resize it)", 2)
            rgb = rgb.resize((IMAGE_SHAPE[2], IMAGE_SHAPE[1]), Image.Resampling.BILINEAR)
        out[i] = np.asarray(rgb)
    return out


@torch.no_grad()
def predict(model: nn.Module, images_u8: np.ndarray, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
    """Class probabilities (N, classes) for uint8 (N, 32, 32, 3) images, normalised as in training; the model sees
    `batch_size` images at a time, so that any number of them fits in memory."""
    device = next(model.parameters()).device
    model.eval()
    parts = [torch.softmax(model(normalize(to_device_uint8(images_u8[i:i + batch_size], device))).float(), dim=1)
             for i in range(0, len(images_u8), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, 0)
