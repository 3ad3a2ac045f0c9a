"""The entry point: find CIFAR-10 at data_dir in whichever form it is there, then take it from the cache or
decode it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .cache import CACHE_VERSION, _Cache, _stat_stamp
from .dataset import ARCHIVE_NAME, BATCHES_DIR, CIFAR10, META, TEST_BATCH, TRAIN_BATCHES, _validate
from .download import _check_md5, _md5, download_cifar10
from .fake import load_fake
from .folders import _decode_tree, _scan_archive, _scan_dir, _Tree
from .official import _batches_from, _load_batches, _read_official_archive, _unpack_official

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


DATASETS = ("cifar10", "fake")  # fake: a small synthetic set for smoke runs, never chosen silently

def load_cifar10(
    data_dir: str | Path = "./data",
    dataset: str = "cifar10",
    download: bool = False,
    cache_dir: str | Path | None = None,
    resize: bool = False,
    progress: bool = True,
    hint: str | None = None,
) -> CIFAR10:
    """Find CIFAR-10 at ``data_dir`` (a directory or a file), decode it or take it from the cache.

    Sources, looked for at ``data_dir`` in this order:

    1. the official python batches, ``cifar-10-batches-py/`` (``data_dir`` itself or a child of it);
    2. the official ``cifar-10-python.tar.gz``, MD5-checked, then read in memory (nothing is unpacked);
    3. with ``download=True``: that archive fetched from ``CIFAR10_URL`` (resumable ``.part`` file,
       MD5-checked) and unpacked into ``cifar-10-batches-py/`` through a temporary directory;
    4. an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (or ``val/``, ``valid/``);
    5. a single ``.tar``, ``.tar.gz``, ``.tgz`` or ``.zip`` of such a tree, read in memory after every
       entry is checked (no absolute paths, ``..``, links leading out, devices).

    Decoded arrays are cached in ``cache_dir`` (see ``default_cache_dir``), one file per source, stamped
    with the source's identity (sizes and times of its files, or an archive's MD5) so that a changed
    source is decoded again; files modified in the last two seconds are not cached yet, since a second
    change within one timestamp tick would go unseen. Cache files are written to a temporary name and
    renamed into place. Every problem with the input is a ``DataError`` with a one-line message saying
    what to do.

    ``dataset="fake"`` returns ``load_fake()`` instead and reads nothing. ``resize=True`` lets image
    folders hold images of other sizes and colour modes, converted to 32x32 RGB (bilinear). ``hint``: what
    the "no CIFAR-10 found" errors tell the user to do, in the terms of the caller's options (default: pass
    --data-dir, or --download).
    """
    if dataset == "fake":
        return load_fake()
    if dataset != "cifar10":
        raise DataError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    src = _locate(_home_expanded(str(data_dir), "--data-dir"), download, progress, hint)
    stamp, settled = _stamp(src)
    cache = _Cache(_home_expanded(str(cache_dir), "--cache-dir") if cache_dir is not None else default_cache_dir())
    key = {"version": CACHE_VERSION, "kind": src.kind, "path": str(src.path.resolve()), "resize": resize}
    data = cache.get(key, stamp)
    if data is None:
        data = _decode(src, resize, progress)
        _validate(data)
        if settled:
            cache.put(key, stamp, data)
    return data


def default_cache_dir() -> Path:
    """``$SBATTN_CACHE``, else ``$XDG_CACHE_HOME/sbattn``, else ``~/.cache/sbattn``."""
    if os.environ.get("SBATTN_CACHE"):
        return _home_expanded(os.environ["SBATTN_CACHE"], "SBATTN_CACHE")
    if os.environ.get("XDG_CACHE_HOME"):
        return _home_expanded(os.environ["XDG_CACHE_HOME"], "XDG_CACHE_HOME") / "sbattn"
    return _home_expanded("~/.cache", "the default cache folder") / "sbattn"


def _home_expanded(path: str, what: str) -> Path:
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):  # a user this machine does not have, or no home folder at all
        raise DataError(f"{what}={path!r} begins with a home folder this machine cannot find; give a folder path")
    return Path(expanded)


# ----------------------------------------------------------------------------------------- finding


@dataclass
class _Source:
    kind: str   # "batches" | "official-archive" | "folder" | "folder-archive"
    path: Path
    tree: _Tree | None = None   # the scanned tree of a "folder" source


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_batches_dir(path: Path) -> bool:
    return path.name == BATCHES_DIR or (path / TRAIN_BATCHES[0]).exists() or (path / TEST_BATCH).exists()


def _locate(root: Path, download: bool, progress: bool, hint: str | None = None) -> _Source:
    hint = hint or ("pass --data-dir with the folder or archive that holds CIFAR-10, "
                    f"or --download to fetch the official archive into {root}")
    if root.is_file():
        if root.name == ARCHIVE_NAME:
            return _Source("official-archive", root)
        if _is_archive(root):
            return _Source("folder-archive", root)
        raise DataError(f"{root} is a file but not a dataset archive (.tar, .tar.gz, .tgz, .zip); {hint}")
    if not root.is_dir():
        if download:
            return _downloaded(root, progress)
        raise DataError(f"no CIFAR-10 found: {root} does not exist; {hint}")
    if _is_batches_dir(root):
        return _Source("batches", root)
    if (root / BATCHES_DIR).is_dir():
        return _Source("batches", root / BATCHES_DIR)
    if (root / ARCHIVE_NAME).is_file():
        return _Source("official-archive", root / ARCHIVE_NAME)
    if download:
        return _downloaded(root, progress)
    tree = _scan_dir(root)
    if tree is not None:
        return _Source("folder", root, tree)
    archives = sorted(p for p in root.iterdir() if p.is_file() and _is_archive(p))
    if len(archives) == 1:
        return _Source("folder-archive", archives[0])
    if len(archives) > 1:
        names = ", ".join(p.name for p in archives)
        raise DataError(f"several archives in {root} ({names}); pass the one to use with --data-dir {root}/NAME")
    looked = [f"{root / BATCHES_DIR}/", str(root / ARCHIVE_NAME), f"{root}/train/ with {root}/test/ (or val/, valid/)",
              f"{root}/*.tar, *.tar.gz, *.tgz, *.zip"]
    raise DataError(f"no CIFAR-10 found; looked for {', '.join(looked)}; {hint}")


def _downloaded(root: Path, progress: bool) -> _Source:
    archive = download_cifar10(root, progress=progress)
    return _Source("batches", _unpack_official(archive, root))


# --------------------------------------------------------------------------- identity and decoding


def _stamp(src: _Source) -> tuple[str, bool]:
    """The source's identity (file sizes and times for directories, content MD5 for archives), and
    whether it may be cached."""
    if src.kind == "batches":
        return _stat_stamp([src.path / n for n in (*TRAIN_BATCHES, TEST_BATCH, META)], src.path)
    if src.kind == "official-archive":
        return _check_md5(src.path), True
    if src.kind == "folder":
        assert src.tree is not None
        return _stat_stamp(src.tree.all_paths, src.path)
    return _md5(src.path), True


def _decode(src: _Source, resize: bool, progress: bool) -> CIFAR10:
    """Decode a located source (the expensive step the cache saves)."""
    if src.kind == "batches":
        return _load_batches(src.path)
    if src.kind == "official-archive":
        return _batches_from(_read_official_archive(src.path), f"{src.path}:{BATCHES_DIR}",
                             f"official CIFAR-10 archive {src.path} (MD5 verified)")
    tree = src.tree if src.kind == "folder" else _scan_archive(src.path)
    assert tree is not None
    what = "image folders at" if src.kind == "folder" else "image-folder archive"
    return _decode_tree(tree, resize, progress, f"{what} {src.path}")
