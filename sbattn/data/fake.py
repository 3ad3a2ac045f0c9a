"""A small deterministic synthetic set with a learnable signal, for smoke runs and tests."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .dataset import CIFAR10, IMAGE_SIZE

FAKE_SIZES = (1024, 256)                        # default (train, test) sizes of the fake set
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
