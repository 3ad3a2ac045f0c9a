"""The reference's data pipeline, bit for bit: torchvision's own transforms and torch's DataLoader over a tiny
in-memory dataset, composed exactly as the reference implementation composes them, against
sbattn.data.reference_draws. Run in the interoperability environment (torchvision)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

tv = pytest.importorskip("torchvision")

sys.path.insert(0, str(Path(__file__).parent))
from _reference import InMemory  # noqa: E402

from sbattn.data.reference_draws import (draw_epoch, draw_eval_pass, pillow_augment,  # noqa: E402
                                         reference_normalize)

N, BATCH = 70, 32  # a last, partial batch, which the reference keeps
TRANSFORMS = {"reference": ("crop", "flip", "rotate"), "standard": ("crop", "flip"), "none": ()}


def reference_batches(images, labels, seed, epochs, mode):
    """The reference's loaders after torch.manual_seed(seed): each epoch's training batches, then one pass of the
    test loader, as its loop does."""
    t = tv.transforms
    named = {"crop": t.RandomCrop(32, padding=4), "flip": t.RandomHorizontalFlip(), "rotate": t.RandomRotation(15)}
    chosen = [named[name] for name in TRANSFORMS[mode]]
    train = InMemory(images, labels, t.Compose([*chosen, t.ToTensor(), t.Normalize(0.5, 0.5)]))
    test = InMemory(images[:40], labels[:40], t.Compose([t.ToTensor(), t.Normalize(0.5, 0.5)]))
    train_loader = torch.utils.data.DataLoader(train, shuffle=True, batch_size=BATCH)
    test_loader = torch.utils.data.DataLoader(test, shuffle=False, batch_size=BATCH)
    torch.manual_seed(seed)
    seen = []
    for _ in range(epochs):
        seen.append([(x, y) for x, y in train_loader])
        seen.append([(x, y) for x, y in test_loader])
    return seen, torch.get_rng_state()


def sbattn_batches(images, labels, seed, epochs, mode):
    torch.manual_seed(seed)
    seen = []
    for _ in range(epochs):
        epoch = draw_epoch(len(images), mode)
        batches = []
        for lo in range(0, len(images), BATCH):
            hi = min(lo + BATCH, len(images))
            x = torch.from_numpy(pillow_augment(images, epoch, lo, hi)).permute(0, 3, 1, 2)
            batches.append((reference_normalize(x), torch.as_tensor(labels)[epoch.order[lo:hi]]))
        seen.append(batches)
        draw_eval_pass()
        test = torch.from_numpy(images[:40]).permute(0, 3, 1, 2)
        seen.append([(reference_normalize(test[lo:lo + BATCH]), torch.as_tensor(labels[:40])[lo:lo + BATCH])
                     for lo in range(0, 40, BATCH)])
    return seen, torch.get_rng_state()


@pytest.mark.parametrize("seed, mode", [(0, "reference"), (1234, "reference"), (5, "standard"), (6, "none")])
def test_the_reference_loaders_batches_bit_for_bit(seed, mode):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, N)
    expected, expected_state = reference_batches(images, labels, seed, 2, mode)
    got, state = sbattn_batches(images, labels, seed, 2, mode)
    assert len(got) == len(expected)
    for passes in zip(got, expected):
        assert [x.shape[0] for x, _ in passes[0]] == [x.shape[0] for x, _ in passes[1]]
        for (x, y), (rx, ry) in zip(*passes):
            assert torch.equal(y, ry)
            assert torch.equal(x, rx), f"{(x != rx).sum().item()} values differ"
    assert torch.equal(state, expected_state)  # the same draws, no more, no fewer: what training draws next agrees
