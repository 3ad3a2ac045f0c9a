"""The official archive: fetched from CIFAR10_URL into a resumable .part file, and checked against CIFAR10_MD5."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import IO

from tqdm import tqdm

from ..errors import DataError
from .dataset import ARCHIVE_NAME

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
DOWNLOAD_TIMEOUT = 30.0                         # seconds without data before a download gives up


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
