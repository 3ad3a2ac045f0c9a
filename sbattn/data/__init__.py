"""CIFAR-10 from every form users have it in (official batches or archive, a download, image folders or an
archive of them): found, checked, decoded once and cached as uint8 arrays; and the training and evaluation
batches drawn from them on the device, augmented as the reference implementation does. Input problems are
one-line ``DataError``s."""

from ..errors import DataError
from .augmentation import AUGMENTS, AugmentParams, apply_params, augment, sample_params
from .batches import (alternating_flips, epoch_batches, eval_batches, normalize, steps_per_epoch, to_device_uint8,
                      train_batches)
from .cifar10 import DATASETS, default_cache_dir, load_cifar10
from .dataset import CIFAR10, CLASSES
from .download import download_cifar10
from .fake import load_fake

# What a user of the data needs; the rest (archive limits, file names, stream strides) stays in its module.
__all__ = [
    "DataError", "CIFAR10", "CLASSES", "DATASETS", "load_cifar10", "load_fake", "download_cifar10", "default_cache_dir",
    "AUGMENTS", "augment", "AugmentParams", "sample_params", "apply_params", "alternating_flips", "normalize",
    "to_device_uint8", "train_batches", "eval_batches", "epoch_batches", "steps_per_epoch",
]
