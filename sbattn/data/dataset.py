"""The decoded dataset: the CIFAR10 container, the names and sizes of the official distribution, and the
last check of what any source produced."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SIZE = 32


@dataclass
class CIFAR10:
    """A decoded dataset in host memory: uint8 NHWC images and int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    source: str

    def fingerprint(self) -> str:
        """A digest of the images, labels and class names: the same for the same data wherever it is read from
        (a folder, an archive, the cache), different for other data."""
        h = hashlib.blake2b(digest_size=16)
        for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(f"{array.dtype}{array.shape}".encode())
            h.update(np.ascontiguousarray(array).data)
        h.update("\0".join(self.classes).encode(errors="surrogateescape"))  # a folder's name may be any bytes
        return h.hexdigest()


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
