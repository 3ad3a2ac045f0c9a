"""CIFAR-10 from every form users have it in: found, checked, decoded once and cached as uint8 arrays.

Sources, looked for at ``data_dir`` (a directory or a file) in this order:

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
renamed into place.
Every problem with the input is a ``DataError`` with a one-line message saying what to do.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image
from tqdm import tqdm

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TEST_SPLITS = ("test", "val", "valid")          # first one present is the test split
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
IMAGE_SIZE = 32
FAKE_SIZES = (1024, 256)                        # default (train, test) sizes of the fake set
DOWNLOAD_TIMEOUT = 30.0                         # seconds without data before a download gives up
CACHE_VERSION = 1                               # bump when the cache format or decoding changes
_POOL_MIN_IMAGES = 4096                         # fewer images than this: decode in-process
_CHUNK = 1000                                   # images per decoding task
_SETTLE_S = 2.0                                 # files modified more recently are not cached yet

__all__ = [
    "DataError", "CIFAR10", "load_cifar10", "load_fake", "download_cifar10", "default_cache_dir",
    "CIFAR10_URL", "CIFAR10_MD5", "CLASSES", "FAKE_SIZES",
]


class DataError(Exception):
    """A user-facing data problem; str(e) is one line saying what happened and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass
class CIFAR10:
    """A decoded dataset in host memory: uint8 NHWC images and int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    source: str


# --------------------------------------------------------------------------------------------- entry


def load_cifar10(
    data_dir: str | Path = "./data",
    dataset: str = "cifar10",
    download: bool = False,
    cache_dir: str | Path | None = None,
    resize: bool = False,
    progress: bool = True,
) -> CIFAR10:
    """Find CIFAR-10 at ``data_dir`` (see the module docstring), decode it or take it from the cache.

    ``dataset="fake"`` returns ``load_fake()`` instead and reads nothing. ``resize=True`` lets image
    folders hold images of other sizes and colour modes, converted to 32x32 RGB (bilinear).
    """
    if dataset == "fake":
        return load_fake()
    if dataset != "cifar10":
        raise DataError(f"unknown dataset {dataset!r}; use 'cifar10' or 'fake'")
    src = _locate(Path(data_dir).expanduser(), download, progress)
    stamp, settled = _stamp(src)
    cache = _Cache(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
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
        return Path(os.environ["SBATTN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sbattn"


# ------------------------------------------------------------------------------------------ finding


@dataclass
class _Source:
    kind: str   # "batches" | "official-archive" | "folder" | "folder-archive"
    path: Path
    tree: _Tree | None = None   # the scanned tree of a "folder" source


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_batches_dir(path: Path) -> bool:
    return path.name == BATCHES_DIR or (path / TRAIN_BATCHES[0]).exists() or (path / TEST_BATCH).exists()


def _locate(root: Path, download: bool, progress: bool) -> _Source:
    hint = ("pass --data-dir with the folder or archive that holds CIFAR-10, "
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


# ------------------------------------------------------------------------------------ cache and stamp


def _md5(path: Path) -> str:
    h = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file and its permissions") from None
    return h.hexdigest()


def _check_md5(path: Path) -> str:
    digest = _md5(path)
    if digest != CIFAR10_MD5:
        raise DataError(
            f"checksum mismatch for {path}: MD5 {digest}, expected {CIFAR10_MD5}; the file is damaged or is not "
            "the official CIFAR-10 archive: delete it and run again with --download, or download it again by hand"
        )
    return digest


def _stat_stamp(paths: list[Path], base: Path) -> tuple[str, bool]:
    """Identity of files by relative path, size and times; and whether all are older than _SETTLE_S."""
    h = hashlib.sha256()
    newest = 0
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            h.update(f"{p.relative_to(base)}\0missing\n".encode())
            continue
        h.update(f"{p.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
        newest = max(newest, st.st_mtime_ns)
    # A file rewritten within one timestamp tick of being stamped would keep its stamp (git's "racy clean"
    # problem), so sources modified in the last seconds are decoded but not cached.
    return h.hexdigest(), newest < time.time_ns() - int(_SETTLE_S * 1e9)


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


class _Cache:
    """One .npz per source, named after the source, holding the stamp it was decoded from."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.root / f"cifar10-{digest}.npz"

    def get(self, key: dict, stamp: str) -> CIFAR10 | None:
        path = self._file(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["stamp"]) != stamp:
                    return None
                data = CIFAR10(
                    z["train_images"], z["train_labels"], z["test_images"], z["test_labels"],
                    [str(c) for c in z["classes"]], f"{z['source']} (cached in {path})",
                )
            _validate(data)
            return data
        except FileNotFoundError:
            return None
        except Exception as e:  # a damaged cache is only a miss; the new file replaces it
            warnings.warn(f"ignoring unreadable cache file {path} ({type(e).__name__}: {e})", stacklevel=3)
            return None

    def put(self, key: dict, stamp: str, data: CIFAR10) -> None:
        path = self._file(key)
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.root)
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f, train_images=data.train_images, train_labels=data.train_labels,
                    test_images=data.test_images, test_labels=data.test_labels,
                    classes=np.array(data.classes), source=np.array(data.source), stamp=np.array(stamp),
                )
            os.replace(tmp, path)
        except OSError as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            warnings.warn(f"could not write the cache {path} ({e}); the data will be decoded again next time",
                          stacklevel=3)


# ----------------------------------------------------------------------------------------- decoding


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


def _validate(data: CIFAR10) -> None:
    """Last check of what any source produced, before it is cached."""
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or len(x) == 0:
            raise DataError(f"{data.source}: {split} images have shape {x.shape} ({x.dtype}), "
                            "expected (N, 32, 32, 3) uint8")
        if y.dtype != np.int64 or y.shape != (len(x),):
            raise DataError(f"{data.source}: {split} labels have shape {y.shape} ({y.dtype}), "
                            f"expected ({len(x)},) int64")
        if y.min() < 0 or y.max() >= len(data.classes):
            raise DataError(f"{data.source}: {split} labels outside 0..{len(data.classes) - 1}")


# ----------------------------------------------------------------------------- official batches


def _latin1(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Python 3's protocol-2 pickles store bytes as _codecs.encode(text, "latin1"); allow only that codec."""
    if encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


@functools.cache
def _safe_globals() -> dict[tuple[str, str], object]:
    """The globals that CIFAR-10 batches need: numpy's array and dtype reconstruction, under either module name."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 moved numpy.core to numpy._core
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, strings, numbers, bytes and numpy arrays; any other global is refused."""

    where = ""

    def find_class(self, module: str, name: str) -> object:
        obj = _safe_globals().get((module, name))
        if obj is None:
            raise DataError(
                f"{self.where} refers to {module}.{name}, which a CIFAR-10 batch never holds; refusing to unpickle "
                "it (it could run code): replace the file with a copy from the official archive (--download)"
            )
        return obj


def _unpickle(blob: bytes, where: str) -> object:
    u = _BatchUnpickler(io.BytesIO(blob), encoding="bytes")  # the official batches are Python 2 pickles
    u.where = where
    try:
        return u.load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where} is truncated or corrupt ({type(e).__name__}: {e}); "
                        "replace it with a copy from the official archive (--download)") from None


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
    data, labels = d["data"], np.asarray(d["labels"])
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
            files[name] = (path / name).read_bytes()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise DataError(f"cannot read {path / name}: {e.strerror or e}; "
                            "check the file and its permissions") from None
    return _batches_from(files, str(path), f"official CIFAR-10 batches at {path}")


# --------------------------------------------------------------------------------- archives, safely


def _member_path(name: str, archive: Path) -> str:
    """An archive entry's normalised relative path; absolute paths and '..' are refused."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise DataError(f"{archive} has an entry with an absolute path ({name!r}); refusing to use it: "
                        "re-create the archive with relative paths")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"{archive} has an entry that leads out of its folder ({name!r}); refusing to use it: "
                        "re-create the archive without '..' paths")
    return "/".join(parts)


def _link_target(member: str, target: str, archive: Path, hard: bool) -> str:
    """Where a link inside the archive points, as an archive path; a link leading out is refused."""
    raw = target.replace("\\", "/")
    joined = raw if hard else posixpath.join(posixpath.dirname(member), raw)
    resolved = posixpath.normpath(joined)
    if raw.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise DataError(f"{archive}: link {member!r} points outside the archive ({target!r}); refusing to use it: "
                        "re-create the archive without links")
    return resolved


@dataclass
class _Archive:
    files: dict[str, bytes]   # regular files (links resolved) by path
    dirs: set[str]            # directory paths, including the parents of every file


def _read_archive(path: Path, want: Callable[[str], bool] = lambda _: True) -> _Archive:
    """Read every wanted regular file of a .tar(.gz) or .zip into memory after checking every entry."""
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    dirs: set[str] = set()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = _member_path(info.filename, path)
                    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no Unix type
                    if info.is_dir():
                        dirs.add(name)
                    elif kind == stat.S_IFLNK:
                        links[name] = _link_target(name, zf.read(info).decode("utf-8", "replace"), path, hard=False)
                    elif kind not in (0, stat.S_IFREG):
                        raise DataError(f"{path}: entry {info.filename!r} is a device or other special file; "
                                        "refusing to use the archive")
                    elif want(name):
                        files[name] = zf.read(info)
        else:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    name = _member_path(m.name, path)
                    if m.isdir():
                        dirs.add(name)
                    elif m.issym() or m.islnk():
                        links[name] = _link_target(name, m.linkname, path, hard=m.islnk())
                    elif not m.isfile():
                        raise DataError(f"{path}: entry {m.name!r} is a device or other special file; "
                                        "refusing to use the archive")
                    elif want(name):
                        f = tf.extractfile(m)
                        assert f is not None
                        files[name] = f.read()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; pass --data-dir with an existing folder or archive") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
                        "download or create it again") from None
    for name, target in links.items():
        for _ in range(32):  # follow chains of links inside the archive
            if target not in links:
                break
            target = links[target]
        if target in files and want(name):
            files[name] = files[target]
        elif target not in dirs and target not in files and want(name):
            raise DataError(f"{path}: link {name!r} points to {target!r}, which the archive does not hold; "
                            "re-create the archive")
    for name in files:
        parts = name.split("/")
        dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))
    return _Archive(files, dirs)


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


# ------------------------------------------------------------------------------------- download


def _fetch(response: IO[bytes], part: Path, mode: str, bar: tqdm, url: str) -> None:
    """Copy the response body into the .part file, telling network failures from local ones."""
    try:
        out = open(part, mode)
    except OSError as e:
        raise DataError(f"cannot write {part}: {e.strerror or e}; pass a writable --data-dir") from None
    with out:
        while True:
            try:
                chunk = response.read(1 << 20)
            except (OSError, HTTPException) as e:
                raise DataError(f"download of {url} broke off ({type(e).__name__}: {e}); check the network "
                                "connection and run again with --download to resume") from None
            if not chunk:
                return
            try:
                out.write(chunk)
            except OSError as e:
                raise DataError(f"cannot write {part}: {e.strerror or e}; free some space and run again "
                                "with --download to resume") from None
            bar.update(len(chunk))


def download_cifar10(data_dir: str | Path, progress: bool = True) -> Path:
    """Fetch the official archive from ``CIFAR10_URL`` into data_dir, check its MD5 and return its path.

    Data goes to ``cifar-10-python.tar.gz.part`` first; an interrupted download resumes from it with an
    HTTP Range request (or starts over if the server ignores ranges), and it is renamed to the final
    name only once its MD5 matches. A mismatching ``.part`` is deleted so the next run starts clean.
    """
    root = Path(data_dir)
    final = root / ARCHIVE_NAME
    if final.is_file():
        _check_md5(final)
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {root} for the download: {e.strerror or e}; "
                        "pass a writable --data-dir") from None
    part = final.with_name(final.name + ".part")
    url = CIFAR10_URL
    for _ in range(2):  # a second go only after a refused range request
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the .part is no prefix of the file: start over
                part.unlink()
                continue
            raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}; try again later, or download "
                            f"{ARCHIVE_NAME} by hand into {root} (--data-dir)") from None
        except (urllib.error.URLError, OSError, HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise DataError(f"cannot download {url} ({reason}); check the network connection, or download "
                            f"{ARCHIVE_NAME} by hand into {root} (--data-dir)") from None
        with response:
            resumed = have > 0 and getattr(response, "status", None) == 206 and \
                response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            with tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=ARCHIVE_NAME,
                      disable=not progress) as bar:
                _fetch(response, part, "ab" if resumed else "wb", bar, url)
        size = part.stat().st_size
        if total is not None and size < total:
            raise DataError(f"download of {url} stopped after {size} of {total} bytes; check the network "
                            "connection and run again with --download to resume")
        break
    digest = _md5(part)
    if digest != CIFAR10_MD5:
        part.unlink()
        raise DataError(f"checksum mismatch for the download of {url}: MD5 {digest}, expected {CIFAR10_MD5}; "
                        "the partial file was deleted: run again with --download to start over")
    os.replace(part, final)
    return final


# ------------------------------------------------------------------------------------ image folders


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
            all_paths.append(cls_dir)
            files: list[tuple[str, str | bytes]] = []
            for dirpath, dirnames, filenames in os.walk(cls_dir):
                dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
                for fn in sorted(filenames):
                    if not _hidden(fn):
                        p = Path(dirpath) / fn
                        all_paths.append(p)
                        files.append((str(p), str(p)))
            by_class[cls_dir.name] = files
        split_classes[split] = by_class
    tree = _build_tree(str(root), split_classes, test_split)
    tree.all_paths = all_paths
    return tree


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


def _decode_chunk(items: list[tuple[str, str | bytes]], resize: bool) -> tuple[np.ndarray | None, str | None]:
    """Decode images (bytes, or a path to read) to uint8 (k, 32, 32, 3); on failure (None, message)."""
    out = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for k, (name, payload) in enumerate(items):
        try:
            blob = Path(payload).read_bytes() if isinstance(payload, str) else payload
            with Image.open(io.BytesIO(blob)) as im:
                im.load()
                if im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode in ("RGB", "L", "P"):
                    rgb = im.convert("RGB") if im.mode != "RGB" else im  # greyscale and palettes convert exactly
                elif resize:
                    rgb = im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
                else:
                    return None, (f"image {name} is {im.size[0]}x{im.size[1]} {im.mode}, expected 32x32 RGB; "
                                  "convert it, or pass --resize (resize=True) to resize and convert such images")
                out[k] = np.asarray(rgb)
        except Exception as e:
            return None, f"cannot read image {name} ({type(e).__name__}: {e}); replace or remove the file"
    return out, None


def _workers(n: int) -> int:
    if n < _POOL_MIN_IMAGES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8))


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


# -------------------------------------------------------------------------------------------- fake


_FAKE_COLOURS = np.array([
    (230, 60, 60), (60, 200, 70), (60, 90, 230), (230, 210, 60), (200, 60, 210),
    (60, 210, 210), (240, 140, 40), (130, 130, 130), (140, 70, 20), (250, 250, 250),
], dtype=np.float32)


def _fake_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    theta = np.arange(10, dtype=np.float32) * (np.pi / 10)
    # Class-specific stripe orientation plus a class colour, under noise: learnable, not trivial.
    stripes = np.sin((xx * np.cos(theta)[:, None, None] + yy * np.sin(theta)[:, None, None]) * (2 * np.pi / 8))
    base = 0.5 * _FAKE_COLOURS[labels][:, None, None, :] + 60 * stripes[labels][..., None] + 64
    noise = rng.normal(0, 40, (n, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels


def load_fake(n_train: int = FAKE_SIZES[0], n_test: int = FAKE_SIZES[1], seed: int = 0) -> CIFAR10:
    """A small deterministic synthetic set with a learnable signal, for smoke runs and tests."""
    if n_train < 1 or n_test < 1:
        raise DataError(f"the fake set needs at least one train and one test image, got {n_train} and {n_test}")
    train_x, train_y = _fake_split(n_train, np.random.default_rng([seed, 0]))
    test_x, test_y = _fake_split(n_test, np.random.default_rng([seed, 1]))
    return CIFAR10(train_x, train_y, test_x, test_y, [f"fake{i}" for i in range(10)],
                   f"fake (synthetic, {n_train} train / {n_test} test, seed={seed})")
