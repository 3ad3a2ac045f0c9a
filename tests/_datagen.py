"""Small CIFAR-10 look-alikes in each form users have it in, written by the tests themselves."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sbattn.data.dataset import BATCHES_DIR, CLASSES, TEST_BATCH, TRAIN_BATCHES


def rng_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes strings and bytes as Python 2 ``str`` (BINSTRING), as the official batches hold them."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    """A protocol-2 pickle shaped like Python 2's, numpy globals under numpy.core as numpy 1 named them."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")


def batch_blob(images_nhwc: np.ndarray, labels: np.ndarray | list, style: str = "py2", **extra: object) -> bytes:
    """One official-format batch: 'data' rows are the R, G, B planes of each image, 'labels' a list."""
    data = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), -1))
    obj = {b"batch_label": b"testing batch", b"labels": [int(v) for v in labels], b"data": data,
           b"filenames": [f"img{i}.png".encode() for i in range(len(images_nhwc))]}
    obj.update({k.encode(): v for k, v in extra.items()})
    if style == "py2":
        return py2_pickle(obj)
    if style == "str-keys":
        return pickle.dumps({k.decode(): v for k, v in obj.items()}, protocol=2)
    return pickle.dumps(obj, protocol=2)  # Python 3, bytes keys


def meta_blob(names: list[str] = CLASSES) -> bytes:
    return py2_pickle({b"label_names": [n.encode() for n in names], b"num_cases_per_batch": 10000, b"num_vis": 3072})


@dataclass
class Expected:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str] = field(default_factory=lambda: list(CLASSES))


def official_files(per_batch: int = 12, seed: int = 0, style: str = "py2") -> tuple[dict[str, bytes], Expected]:
    rng = np.random.default_rng(seed)
    files, xs, ys = {}, [], []
    for k, name in enumerate((*TRAIN_BATCHES, TEST_BATCH)):
        x = rng_images(per_batch, seed * 100 + k)
        y = rng.integers(0, 10, per_batch)
        files[name] = batch_blob(x, y, style)
        xs.append(x)
        ys.append(y)
    files["batches.meta"] = meta_blob()
    exp = Expected(np.concatenate(xs[:5]), np.concatenate(ys[:5]).astype(np.int64), xs[5], ys[5].astype(np.int64))
    return files, exp


def write_official_dir(root: Path, **kw: object) -> tuple[Path, Expected]:
    files, exp = official_files(**kw)  # type: ignore[arg-type]
    d = root / BATCHES_DIR
    d.mkdir(parents=True)
    for name, blob in files.items():
        (d / name).write_bytes(blob)
    return d, exp


def write_official_archive(path: Path, **kw: object) -> tuple[str, Expected]:
    """A tar.gz laid out like cifar-10-python.tar.gz; returns its MD5."""
    files, exp = official_files(**kw)  # type: ignore[arg-type]
    add_to_tar(path, {f"{BATCHES_DIR}/{name}": blob for name, blob in files.items()}, dirs=[BATCHES_DIR])
    return md5(path), exp


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def add_to_tar(path: Path, files: dict[str, bytes], dirs: list[str] = (), mode: str = "w:gz") -> None:
    with tarfile.open(path, mode) as tf:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


def encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def decode(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(im.convert("RGB"))


def tree_files(classes: list[str] = CLASSES[:3], n_train: int = 4, n_test: int = 2, fmt: str = "PNG",
               test_split: str = "test", seed: int = 0) -> tuple[dict[str, bytes], Expected]:
    """An image-folder tree as {relative path: encoded image}, and what loading it must give."""
    ext = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp"}[fmt]
    files: dict[str, bytes] = {}
    out: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for s, (split, n, dirname) in enumerate((("train", n_train, "train"), ("test", n_test, test_split))):
        for label, cls in enumerate(sorted(classes)):
            for i, image in enumerate(rng_images(n, seed * 1000 + s * 100 + label)):
                blob = encode(image, fmt)
                files[f"{dirname}/{cls}/{i:04d}.{ext}"] = blob
                out[split][0].append(decode(blob))  # JPEG is lossy: expect what Pillow decodes
                out[split][1].append(label)
    exp = Expected(np.stack(out["train"][0]), np.array(out["train"][1]), np.stack(out["test"][0]),
                   np.array(out["test"][1]), sorted(classes))
    return files, exp


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, blob in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)
    return root


def settle(path: Path, age_s: float = 60.0) -> Path:
    """Backdate every file and folder under path, as if written a while ago (fresh files are not cached)."""
    when = time.time() - age_s
    for p in [path, *path.rglob("*")]:
        os.utime(p, (when, when))
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    return path


# ------------------------------------------------------------------------------------ http server


@dataclass
class Server:
    url: str
    requests: list[dict[str, str]]


@contextlib.contextmanager
def serve(payload: bytes, *, ranges: bool = True, cut_at: int | None = None,
          status: int | None = None) -> Iterator[Server]:
    """A loopback HTTP server for one file, honouring Range (or not), optionally dying after cut_at bytes
    or answering every request with an error status."""
    requests: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(dict(self.headers))
            if status is not None:
                self.send_error(status)
                return
            start = 0
            rng = self.headers.get("Range")
            if ranges and rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
                if start >= len(payload):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(payload)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
            else:
                self.send_response(200)
            body = payload[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if cut_at is None else body[:max(0, cut_at - start)])

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}/cifar-10-python.tar.gz", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
