"""`sbattn export`, `sbattn evaluate` and `sbattn predict`: a trained model outside training."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from ..config import PRECISIONS, TrainConfig, resolve_device
from ..config.recipe import shown
from ..data import DATASETS, load_cifar10, to_device_uint8
from ..errors import UserError, printable
from ..inference import (EXPORT_INSTALL, FORMATS, PREDICT_BATCH, class_names, export_metadata, export_onnx,
                         export_program, predict, read_images, trained_classes)
from ..records.checkpoint import load, recorded
from ..train.evaluation import evaluate, reference_evaluate
from ..train.step import precision_label, resolve_precision

__all__ = ["add_export_options", "run_export", "add_evaluate_options", "run_evaluate", "add_predict_options",
           "run_predict"]

_FIELDS = TrainConfig.__dataclass_fields__
DEVICE_HELP = _FIELDS["device"].metadata["help"]


def add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a trained model (.pth) or training checkpoint (.ckpt)")
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx", metavar="FORMAT",
                        help=f"one of onnx (needs {EXPORT_INSTALL}; class names, normalisation and configuration in "
                             f"its metadata), torch-export (default: onnx)")
    parser.add_argument("--output", "-o", default=None,
                        help="file to write, never the one being exported; none given: the checkpoint's name with "
                             ".onnx or .pt2")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch size (without it: any batch size)")


def run_export(args: argparse.Namespace) -> int:
    source = Path(args.checkpoint)
    output = Path(args.output) if args.output else source.with_suffix(FORMATS[args.format])
    if _same_file(output, source):
        raise UserError(f"{output} is the file being exported: give another --output", 2)
    model = load(source)
    if not output.parent.is_dir():
        raise UserError(f"cannot write {output}: the folder {output.parent} does not exist", 2)
    try:
        if args.format == "onnx":
            export_onnx(model, output, batch_dynamic=not args.static_batch, metadata=export_metadata(source, model))
        else:
            export_program(model, output, batch_dynamic=not args.static_batch)
    except OSError as e:  # a full disk, a read-only folder: the export is written atomically, so nothing is lost
        kept = f"the earlier {output.name} is left as it was" if output.exists() else "nothing was written"
        raise UserError(f"cannot write {output} ({e.strerror or e}); {kept}") from None
    print(f"wrote {output} ({args.format}; input (N, 3, 32, 32) normalised as (x/255 - 0.5)/0.5, output logits)")
    return 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def add_evaluate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a trained model (.pth) or training checkpoint (.ckpt)")
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                        help="where CIFAR-10 is; none given: the training run's")
    parser.add_argument("--dataset", choices=DATASETS, default=None, metavar="DATASET",
                        help=f"one of {', '.join(DATASETS)}; none given: the training run's")
    parser.add_argument("--cache-dir", "--cache_dir", dest="cache_dir", default=None,
                        help="cache of decoded arrays; none given: $SBATTN_CACHE, else ~/.cache/sbattn")
    parser.add_argument("--device", default=None, help=DEVICE_HELP)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                        help="evaluation batch size; none given: the training run's --eval-batch-size")
    parser.add_argument("--other-classes", action="store_true",
                        help="evaluate on data whose class names differ from those the model was trained on, the "
                             "data's i-th class scored as the model's i-th (refused otherwise)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", metavar="PRECISION",
                        help=f"fp32 reproduces the final accuracy the training run reported; "
                             f"{_FIELDS['precision'].metadata['help']}; one of {', '.join(PRECISIONS)} "
                             f"(default: fp32)")


def run_evaluate(args: argparse.Namespace) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}", 2)
    device = torch.device(resolve_device(args.device))
    model = load(args.checkpoint, device)
    recipe, trained, num_classes = recorded(model)
    recorded_options = {"data_dir": ("--data-dir", args.data_dir, lambda v: isinstance(v, str)),
                        "cache_dir": ("--cache-dir", args.cache_dir, lambda v: v is None or isinstance(v, str)),
                        "eval_batch_size": ("--batch-size", args.batch_size, lambda v: type(v) is int and v >= 1)}
    for name, (flag, given, fits) in recorded_options.items():  # the file's record of how it trained, unchecked
        if given is None and not fits(trained[name]):
            raise UserError(f"{args.checkpoint} records {name}={shown(trained[name])}, not a value it takes: pass "
                            f"{flag}", 2)
    data = load_cifar10(args.data_dir or trained["data_dir"], args.dataset or recipe.dataset, False,
                        args.cache_dir if args.cache_dir is not None else trained["cache_dir"], progress=False,
                        hint="pass --data-dir with the folder or archive that holds CIFAR-10 "
                             "(`sbattn train --download` fetches it)")
    if len(data.classes) != num_classes:
        raise UserError(f"{args.checkpoint} classifies {num_classes} classes, {data.source} has "
                        f"{len(data.classes)}: evaluate it on data of the classes it was trained on", 2)
    names = trained_classes(args.checkpoint)
    if names is not None and names != list(data.classes) and not args.other_classes:
        raise UserError(f"{args.checkpoint} was trained on the classes {printable(', '.join(names))}; "
                        f"{data.source} has {printable(', '.join(data.classes))}: evaluate it on data of its "
                        f"classes, or pass --other-classes to score the data's i-th class as its i-th", 2)
    images = to_device_uint8(data.test_images, device)
    labels = torch.from_numpy(data.test_labels).to(device)
    amp_dtype = resolve_precision(args.precision, device)
    batch = recipe.batch_size  # the reference's figure groups the test set into batches of the training's
    if recipe.rng == "reference":  # evaluated as it was trained: the model itself, the reference's batches
        result = reference_evaluate(model, images, labels, args.batch_size or batch, amp_dtype)
    else:
        result = evaluate(model, images, labels, args.batch_size or trained["eval_batch_size"], amp_dtype,
                              batch_mean_size=batch)
    print(f"test loss {result.loss:.4f}  accuracy {100 * result.acc:.2f}%  (the reference's figure, the mean of "
          f"batches of {batch}: {100 * result.batch_mean_acc:.2f}%; {len(labels)} images, {data.source}, "
          f"{precision_label(amp_dtype)})")
    return 0


def add_predict_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a trained model (.pth) or training checkpoint (.ckpt)")
    parser.add_argument("images", nargs="+", help="image files (32x32, or any size with --resize)")
    parser.add_argument("--topk", type=int, default=5, help="classes to show per image (default: 5)")
    parser.add_argument("--resize", action="store_true", help="resize images of other sizes to 32x32 (bilinear)")
    parser.add_argument("--device", default=None, help=DEVICE_HELP)


def run_predict(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise UserError(f"--topk must be >= 1, got {args.topk}", 2)
    model = load(args.checkpoint, resolve_device(args.device))
    num_classes = recorded(model)[2]
    names = [printable(n) for n in class_names(args.checkpoint, num_classes)]  # from the file: no escapes
    width = max(len(n) for n in names)
    for start in range(0, len(args.images), PREDICT_BATCH):  # read, classify and print a batch at a time
        paths = args.images[start:start + PREDICT_BATCH]
        probs, indices = predict(model, read_images(paths, args.resize)).cpu().topk(
            min(args.topk, num_classes), dim=1)
        for path, p_row, i_row in zip(paths, probs.tolist(), indices.tolist()):
            print(printable(path))
            for p, i in zip(p_row, i_row):
                print(f"  {names[i]:<{width}}  {100 * p:6.2f}%")
    return 0
