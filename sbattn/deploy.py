"""A trained model outside training: ONNX and torch.export files, test accuracy, predictions for image files.

The CLI commands `sbattn export`, `sbattn evaluate` and `sbattn predict` live here. Exported models take
normalised float images (N, 3, 32, 32), (x / 255 - 0.5) / 0.5 as in training, and return logits (N, classes),
for any batch size N.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, load, read_record
from .cli import UserError

__all__ = ["export_onnx", "export_program", "load_trained", "class_names", "read_images", "predict",
           "add_export_options", "run_export", "add_evaluate_options", "run_evaluate",
           "add_predict_options", "run_predict"]

IMAGE_SHAPE = (3, 32, 32)
FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}


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
                opset_version: int | None = None) -> Path:
    """Write `model` (in eval mode) to an ONNX file, input "images" (N, 3, 32, 32), output "logits".

    dynamo: the torch.export-based exporter (None: when onnxscript is installed, else the TorchScript one).
    batch_dynamic: N is a symbolic dimension "batch"; otherwise it is fixed to 2.
    """
    path = Path(path)
    if dynamo is None:
        dynamo = importlib.util.find_spec("onnxscript") is not None
    model = copy.deepcopy(model).eval()
    x = _example(model)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) >= 2**31 - 2**26
    with _quiet_exporter(), torch.no_grad():
        if dynamo:
            shapes = ({0: torch.export.Dim("batch", min=1)},) if batch_dynamic else None
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["images"], output_names=["logits"],
                              dynamic_shapes=shapes, external_data=big, opset_version=opset_version,
                              verbose=False)
        else:
            axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if batch_dynamic else None
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["images"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=opset_version or 17)
    return path


def export_program(model: nn.Module, path: str | Path, batch_dynamic: bool = True) -> Path:
    """Write `model` (in eval mode) as a torch.export program (.pt2); load with torch.export.load(path).module()."""
    path = Path(path)
    model = copy.deepcopy(model).eval()
    shapes = ({0: torch.export.Dim("batch", min=1)},) if batch_dynamic else None
    with _quiet_exporter(), torch.no_grad():
        program = torch.export.export(model, (_example(model),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


# ------------------------------------------------------------------------------------------------ CLI


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """checkpoint.load, with a missing or unusable file as a UserError (exit status 2)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file (give the .pth that training wrote)", 2)
    try:
        return load(path, device)
    except CheckpointError as e:
        raise UserError(str(e), 2) from None
    except (RuntimeError, KeyError, TypeError, ValueError) as e:  # weights that do not fit the recorded model
        first_line = (str(e).splitlines() or [""])[0]
        raise UserError(f"{path}: cannot rebuild its model ({type(e).__name__}: {first_line})", 2) from None


def class_names(path: str | Path, num_classes: int) -> list[str]:
    """The class names a checkpoint records, else those of its dataset, else the CIFAR-10 names."""
    from .data import CLASSES, load_fake
    try:
        obj = read_record(Path(path))
    except CheckpointError as e:
        raise UserError(str(e), 2) from None
    summary = obj.get("summary") or {}
    names = summary.get("classes") or obj.get("classes")
    if not names:
        names = load_fake(1, 1).classes if (obj.get("config") or {}).get("dataset") == "fake" else CLASSES
    names = [str(n) for n in names]
    return names if len(names) == num_classes else [f"class {i}" for i in range(num_classes)]


def read_images(paths: Sequence[str | Path], resize: bool = False) -> np.ndarray:
    """Image files -> uint8 (N, 32, 32, 3) RGB; other sizes need resize=True (bilinear)."""
    from PIL import Image
    out = np.empty((len(paths), IMAGE_SHAPE[1], IMAGE_SHAPE[2], 3), np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        except OSError as e:  # missing, unreadable, not an image
            raise UserError(f"cannot read image {path} ({type(e).__name__}: {e})", 2) from None
        if rgb.size != (IMAGE_SHAPE[2], IMAGE_SHAPE[1]):
            if not resize:
                raise UserError(f"image {path} is {rgb.size[0]}x{rgb.size[1]}; the model takes 32x32 images "
                                f"(pass --resize to resize it)", 2)
            rgb = rgb.resize((IMAGE_SHAPE[2], IMAGE_SHAPE[1]), Image.Resampling.BILINEAR)
        out[i] = np.asarray(rgb)
    return out


@torch.no_grad()
def predict(model: nn.Module, images_u8: np.ndarray) -> torch.Tensor:
    """Class probabilities (N, classes) for uint8 (N, 32, 32, 3) images, normalised as in training."""
    from .augment import normalize, to_device_uint8
    device = next(model.parameters()).device
    return torch.softmax(model.eval()(normalize(to_device_uint8(images_u8, device))).float(), dim=1)


def _resolve_device(name: str | None) -> str:
    from .config import resolve_device
    return resolve_device(name)


def add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a trained model (.pth) or training checkpoint (.ckpt)")
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx", help="(default: onnx)")
    parser.add_argument("--output", "-o", default=None,
                        help="file to write (default: the checkpoint's name with .onnx or .pt2)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch size (default: any batch size)")


def run_export(args: argparse.Namespace) -> int:
    model = load_trained(args.checkpoint)
    output = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(FORMATS[args.format])
    if not output.parent.is_dir():
        raise UserError(f"cannot write {output}: the folder {output.parent} does not exist", 2)
    if args.format == "onnx":
        export_onnx(model, output, batch_dynamic=not args.static_batch)
    else:
        export_program(model, output, batch_dynamic=not args.static_batch)
    print(f"wrote {output} ({args.format}; input (N, 3, 32, 32) normalised as (x/255 - 0.5)/0.5, output logits)")
    return 0


def add_evaluate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a trained model (.pth) or training checkpoint (.ckpt)")
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                        help="where CIFAR-10 is (default: the training run's)")
    parser.add_argument("--dataset", choices=("cifar10", "fake"), default=None, help="(default: the training run's)")
    parser.add_argument("--cache-dir", "--cache_dir", dest="cache_dir", default=None,
                        help="cache of decoded arrays (default $SBATTN_CACHE or ~/.cache/sbattn)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: CUDA when present)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=1000,
                        help="evaluation batch size (default: 1000)")


def run_evaluate(args: argparse.Namespace) -> int:
    from .augment import to_device_uint8
    from .data import load_cifar10
    from .evaluation import evaluate
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}", 2)
    device = torch.device(_resolve_device(args.device))
    model = load_trained(args.checkpoint, device)
    trained = model.config
    data = load_cifar10(args.data_dir or trained.data_dir, args.dataset or trained.dataset, False,
                        args.cache_dir if args.cache_dir is not None else trained.cache_dir, progress=False)
    images = to_device_uint8(data.test_images, device)
    labels = torch.from_numpy(data.test_labels).to(device)
    loss, acc = evaluate(model, images, labels, batch_size=args.batch_size)
    print(f"test loss {loss:.4f}  accuracy {100 * acc:.2f}%  ({len(labels)} images, {data.source})")
    return 0


def add_predict_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a trained model (.pth) or training checkpoint (.ckpt)")
    parser.add_argument("images", nargs="+", help="image files (32x32, or any size with --resize)")
    parser.add_argument("--topk", type=int, default=5, help="classes to show per image (default: 5)")
    parser.add_argument("--resize", action="store_true", help="resize images of other sizes to 32x32 (bilinear)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: CUDA when present)")


def run_predict(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise UserError(f"--topk must be >= 1, got {args.topk}", 2)
    model = load_trained(args.checkpoint, _resolve_device(args.device))
    probs = predict(model, read_images(args.images, args.resize))
    names = class_names(args.checkpoint, probs.shape[1])
    probs, indices = probs.cpu().topk(min(args.topk, probs.shape[1]), dim=1)
    width = max(len(n) for n in names)
    for path, p_row, i_row in zip(args.images, probs.tolist(), indices.tolist()):
        print(path)
        for p, i in zip(p_row, i_row):
            print(f"  {names[i]:<{width}}  {100 * p:6.2f}%")
    return 0
