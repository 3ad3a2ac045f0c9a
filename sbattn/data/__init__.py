"""CIFAR-10 from every form users have it in (official batches or archive, a download, image folders or an
archive of them): found, checked, decoded once and cached as uint8 arrays; and the training and evaluation
batches drawn from them on the device, augmented as the reference implementation does. Input problems are
one-line ``DataError``s."""

from ..errors import DataError
from .augmentation import (AUGMENT_ALIASES, AUGMENTS, MAX_ANGLE, PAD, AugmentParams, apply_params, augment,
                           canonical_augment, sample_params)
from .batches import (STREAM_STRIDE, alternating_flips, augment_stream_seed, epoch_augment_seed, epoch_batches, epoch_order,
                      eval_batches, eval_shard, normalize, steps_per_epoch, to_device_uint8, train_batches)
from .cifar10 import DATASETS, default_cache_dir, load_cifar10
from .dataset import ARCHIVE_NAME, BATCHES_DIR, CIFAR10, CLASSES, IMAGE_SIZE, META, TEST_BATCH, TRAIN_BATCHES
from .download import CIFAR10_MD5, CIFAR10_URL, download_cifar10
from .fake import FAKE_SIZES, load_fake
from .limits import MAX_ARCHIVE_BYTES, MAX_ENTRY_BYTES, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, open_image, read_regular

__all__ = [
    "DataError", "CIFAR10", "DATASETS", "load_cifar10", "load_fake", "download_cifar10", "default_cache_dir",
    "CIFAR10_URL", "CIFAR10_MD5", "CLASSES", "FAKE_SIZES", "ARCHIVE_NAME", "BATCHES_DIR", "TRAIN_BATCHES",
    "TEST_BATCH", "META", "IMAGE_SIZE",
    "AUGMENTS", "AUGMENT_ALIASES", "canonical_augment", "PAD", "MAX_ANGLE", "AugmentParams", "sample_params",
    "apply_params", "augment", "normalize", "to_device_uint8", "epoch_order", "train_batches", "eval_batches", "eval_shard",
    "steps_per_epoch", "alternating_flips", "STREAM_STRIDE", "augment_stream_seed", "epoch_batches", "epoch_augment_seed",
    "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "MAX_ENTRY_BYTES", "MAX_ARCHIVE_BYTES", "open_image", "read_regular",
]
