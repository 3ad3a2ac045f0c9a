"""Image-folder trees, train/<class>/* and test/<class>/* on disk or in an archive, decoded in worker processes."""

from __future__ import annotations

import functools
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from ..system import available_cores
from .archives import _read_archive
from .dataset import ARCHIVE_NAME, BATCHES_DIR, CIFAR10, IMAGE_SIZE
from .limits import MAX_IMAGE_BYTES, check_inside, check_regular, open_image, read_regular, too_large

TEST_SPLITS = ("test", "val", "valid")          # first one present is the test split
_POOL_MIN_IMAGES = 4096                         # fewer images than this: decode in-process
_CHUNK = 1000                                   # images per decoding task


_ByClass = dict[str, list[tuple[str, str | bytes]]]   # class -> [(display name, path or bytes)]


@dataclass
class _Tree:
    """An image-folder dataset: per split, (label, display name, path or bytes) in class then name order."""

    classes: list[str]
    splits: dict[str, list[tuple[int, str, str | bytes]]]
    test_split: str
    all_paths: list[Path] = field(default_factory=list)   # what the stamp covers, for trees on disk


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _build_tree(where: str, split_classes: dict[str, _ByClass], test_split: str) -> _Tree:
    train, test = split_classes["train"], split_classes[test_split]
    if not train:
        raise DataError(f"{where}/train has no class folders; put the images in train/<class>/")
    if set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise DataError(f"{where}: train and {test_split} have different class folders (only in train: {only_train}; "
                        f"only in {test_split}: {only_test}); make both hold the same classes")
    classes = sorted(train)
    splits = {}
    for split, by_class in (("train", train), ("test", test)):
        items = []
        for label, cls in enumerate(classes):
            files = by_class[cls]
            if not files:
                folder = f"{where}/{test_split if split == 'test' else 'train'}/{cls}"
                raise DataError(f"class folder {folder} is empty; "
                                "put its images back or remove the folder from every split")
            items += [(label, name, payload) for name, payload in sorted(files, key=lambda f: f[0])]
        splits[split] = items
    return _Tree(classes, splits, test_split)


def _scan_dir(root: Path) -> _Tree | None:
    """The image-folder tree at root, or None when root has no train/ plus test/ (val/, valid/)."""
    test_split = next((s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_split is None:
        return None
    all_paths: list[Path] = []
    split_classes: dict[str, _ByClass] = {}
    for split in ("train", test_split):
        split_dir = root / split
        by_class: _ByClass = {}
        for cls_dir in sorted(split_dir.iterdir()):
            if not cls_dir.is_dir() or _hidden(cls_dir.name):
                continue
            check_inside(cls_dir, root)
            all_paths.append(cls_dir)
            files = _class_files(cls_dir, root)
            all_paths += [Path(p) for _, p in files]
            by_class[cls_dir.name] = list(files)
        split_classes[split] = by_class
    tree = _build_tree(str(root), split_classes, test_split)
    tree.all_paths = all_paths
    return tree


def _class_files(cls_dir: Path, root: Path) -> list[tuple[str, str]]:
    """A class folder's files, checked before any is read: regular files, inside the tree (links may not lead
    out), none larger than an image may be."""
    files: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(cls_dir):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for fn in sorted(filenames):
            if _hidden(fn):
                continue
            p = Path(dirpath) / fn
            if p.is_symlink():
                check_inside(p, root)
            try:
                st = p.stat()
            except OSError as e:
                raise DataError(f"cannot read image {p} ({e.strerror or e}); replace or remove the file") from None
            check_regular(p, st.st_mode)
            if st.st_size > MAX_IMAGE_BYTES:
                raise too_large(f"image {p}", st.st_size, MAX_IMAGE_BYTES)
            files.append((str(p), str(p)))
    return files


def _scan_archive(path: Path) -> _Tree:
    """The image-folder tree inside an archive, found at its top or under one common folder."""
    arc = _read_archive(path)
    roots = []
    for d in arc.dirs | {""}:
        prefix = f"{d}/" if d else ""
        test_split = next((s for s in TEST_SPLITS if f"{prefix}{s}" in arc.dirs), None)
        if f"{prefix}train" in arc.dirs and test_split and not any(_hidden(p) for p in d.split("/")):
            roots.append((d.count("/") + bool(d), d, test_split))
    if not roots:
        hint = (f" it looks like the official archive: name it {ARCHIVE_NAME} so that its MD5 is checked"
                if f"{BATCHES_DIR}" in arc.dirs or any(d.endswith(f"/{BATCHES_DIR}") for d in arc.dirs) else "")
        raise DataError(f"{path} holds no train/<class>/ and test/<class>/ (or val/, valid/) folders;"
                        f"{hint or ' re-create it with that layout'}")
    roots.sort()
    if len(roots) > 1 and roots[0][0] == roots[1][0]:
        raise DataError(f"{path} holds several image-folder trees ({roots[0][1]!r}, {roots[1][1]!r}); keep one")
    _, top, test_split = roots[0]
    prefix = f"{top}/" if top else ""
    split_classes: dict[str, _ByClass] = {}
    for split in ("train", test_split):
        base = f"{prefix}{split}/"
        by_class: _ByClass = {}
        for d in arc.dirs:
            if d.startswith(base) and "/" not in d[len(base):] and not _hidden(d[len(base):]):
                by_class.setdefault(d[len(base):], [])
        for name, blob in arc.files.items():
            if name.startswith(base):
                parts = name[len(base):].split("/")
                if len(parts) >= 2 and not any(_hidden(p) for p in parts):
                    by_class[parts[0]].append((f"{path}:{name}", blob))
        split_classes[split] = by_class
    return _build_tree(f"{path}:{top}" if top else str(path), split_classes, test_split)


# ---------------------------------------------------------------------------------------- decoding


def _decode_chunk(items: list[tuple[str, str | bytes]], resize: bool) -> tuple[np.ndarray | None, str | None]:
    """Decode images (bytes, or a path to read) to uint8 (k, 32, 32, 3); on failure (None, message)."""
    out = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for k, (name, payload) in enumerate(items):
        try:
            blob = read_regular(payload, MAX_IMAGE_BYTES, "image") if isinstance(payload, str) else payload
            with open_image(blob, name) as im:
                im.load()
                if im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode in ("RGB", "L", "P"):
                    rgb = im.convert("RGB") if im.mode != "RGB" else im  # greyscale and palettes convert exactly
                elif resize:
                    rgb = im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
                else:
                    return None, (f"image {name} is {im.size[0]}x{im.size[1]} {im.mode}, expected 32x32 RGB; "
                                  "convert it, or pass --resize (resize=True) to resize and convert such images")
                out[k] = np.asarray(rgb)
        except DataError as e:
            return None, str(e)
        except Exception as e:
            return None, f"cannot read image {name} ({type(e).__name__}: {e}); replace or remove the file"
    return out, None


def _workers(n: int) -> int:
    if n < _POOL_MIN_IMAGES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(available_cores(), 8))


def _decode_items(items: list[tuple[str, str | bytes]], resize: bool, progress: bool) -> np.ndarray:
    """Decode in forked worker processes (Pillow spends most of its time in Python, so threads don't help)."""
    out = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    work = functools.partial(_decode_chunk, resize=resize)
    workers = _workers(len(items))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if workers > 1 else None
    try:
        if pool is not None:
            # Workers fork as tasks are submitted: all of them here, before tqdm starts its monitor thread.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                results = pool.map(work, chunks)
        else:
            results = map(work, chunks)
        with tqdm(total=len(items), unit="img", desc="decoding images", disable=not progress) as bar:
            pos = 0
            for arr, err in results:
                if err is not None:
                    raise DataError(err)
                assert arr is not None
                out[pos:pos + len(arr)] = arr
                pos += len(arr)
                bar.update(len(arr))
    except BrokenProcessPool as e:
        raise DataError(f"an image decoding process died ({e}); "
                        "a damaged image may crash Pillow: check the images") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out


def _decode_tree(tree: _Tree, resize: bool, progress: bool, where: str) -> CIFAR10:
    train, test = tree.splits["train"], tree.splits["test"]
    images = _decode_items([(n, p) for _, n, p in train + test], resize, progress)
    labels = np.array([label for label, _, _ in train + test], dtype=np.int64)
    n = len(train)
    source = f"{where} (train/, {tree.test_split}/)"
    return CIFAR10(images[:n], labels[:n], images[n:], labels[n:], list(tree.classes), source)
