"""Bounded reading of input files: regular files only (never a FIFO, a device or a link leading out of the
dataset's folder), at most so many bytes per file and per archive entry, and images of at most so many pixels,
each refused with one line before anything large is read or decoded."""
from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

from PIL import Image

from ..errors import DataError
from ..files import file_kind

__all__ = ["MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "MAX_ENTRY_BYTES", "MAX_ARCHIVE_BYTES", "read_regular",
           "check_inside", "check_regular", "open_image", "too_large"]

MAX_IMAGE_BYTES = 16 * 2**20      # one image file (a CIFAR-10 PNG is 2-3 KB; a photo for --resize a few MB)
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own decompression-bomb threshold, as an error
MAX_ENTRY_BYTES = 48 * 2**20      # one archive entry: the official archive's largest member is 31 MB
MAX_ARCHIVE_BYTES = 4 * 2**30     # all the entries read from one archive together

def too_large(what: str, size: int, limit: int) -> DataError:
    return DataError(f"{what} is {size:,} bytes, more than the {limit:,} sbattn reads for one; refusing it "
                     f"(remove it, or shrink it)")


def check_regular(path: Path, mode: int) -> None:
    """A DataError unless `mode` (of a stat that followed links) is a regular file's."""
    if not stat.S_ISREG(mode):
        raise DataError(f"{path} is {file_kind(mode)}, not a regular file; refusing to read it: remove it from the dataset")


def check_inside(path: Path, root: Path) -> None:
    """A link (or a folder's link) leading out of the dataset's folder `root` is refused."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top:
        raise DataError(f"{path} is a link leading out of {root} (to {real}); refusing to follow it: copy the file "
                        f"into the dataset's folder instead")


def read_regular(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; a FIFO, a device or a larger file is a DataError.
    OSErrors (a missing file, no permission) are the caller's to word."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait for a writer
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        check_regular(Path(path), st.st_mode)
        if st.st_size > limit:
            raise too_large(f"{what} {path}", st.st_size, limit)
        blob = f.read(limit + 1)
    if len(blob) > limit:  # grew while being read
        raise too_large(f"{what} {path}", len(blob), limit)
    return blob


def open_image(blob: bytes, name: str) -> Image.Image:
    """A lazily decoded Pillow image of an image file's bytes, refused before decoding when it is larger than
    MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS (a decompression bomb unpacks a small file into gigabytes)."""
    if len(blob) > MAX_IMAGE_BYTES:
        raise too_large(f"image {name}", len(blob), MAX_IMAGE_BYTES)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(blob))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # Pillow's check, in Image.open
        raise DataError(f"image {name} has more than the {MAX_IMAGE_PIXELS:,} pixels sbattn decodes ({e}); "
                        f"refusing it: resize it first") from None
    if im.width * im.height > MAX_IMAGE_PIXELS:
        raise DataError(f"image {name} is {im.width}x{im.height} pixels, more than the {MAX_IMAGE_PIXELS:,} sbattn "
                        f"decodes; refusing it: resize it first")
    return im
