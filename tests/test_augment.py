"""sbattn.data augmentation: the reference implementation's transforms on batches, checked against per-image
references and by statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sbattn.data.augmentation import AUGMENT_ALIASES, canonical_augment
from sbattn.data.batches import STREAM_STRIDE, augment_stream_seed, epoch_augment_seed, epoch_order
from sbattn.data import (
    AUGMENTS, AugmentParams, apply_params, augment, epoch_batches, eval_batches, load_fake, normalize,
    sample_params, steps_per_epoch, to_device_uint8, train_batches,
)


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def coordinate_images(n: int) -> torch.Tensor:
    """Every pixel names its own source: channel 0 = row + 1, channel 1 = column + 1 (0 means zero fill)."""
    x = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    x[:, 0] = torch.arange(1, 33, dtype=torch.uint8).view(32, 1)
    x[:, 1] = torch.arange(1, 33, dtype=torch.uint8).view(1, 32)
    x[:, 2] = 200
    return x


def reference(img: np.ndarray, dy: int, dx: int, flip: bool, angle: float | None) -> np.ndarray:
    """Straightforward per-image, per-pixel version of RandomCrop(32, padding=4) -> flip -> rotate (PIL nearest)."""
    c, h, w = img.shape
    crop = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            sy, sx = y + dy, x + dx
            if 0 <= sy < h and 0 <= sx < w:
                crop[:, y, x] = img[:, sy, sx]
    if flip:
        crop = crop[:, :, ::-1]
    if angle is None:
        return crop
    out = np.zeros_like(img)
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for y in range(h):
        for x in range(w):
            u, v = x - (w - 1) / 2, y - (h - 1) / 2
            sx, sy = math.floor(cos * u - sin * v + w / 2), math.floor(sin * u + cos * v + h / 2)
            if 0 <= sy < h and 0 <= sx < w:
                out[:, y, x] = crop[:, sy, sx]
    return out


def params_of(p: AugmentParams, k: int) -> tuple[int, int, bool, float | None]:
    return int(p.dy[k]), int(p.dx[k]), bool(p.flip[k]), None if p.angle is None else float(p.angle[k])


# ----------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("mode", ["seed", "standard"])
def test_matches_per_pixel_reference(mode: str) -> None:
    x = images(24, seed=1)
    p = sample_params(24, torch.Generator().manual_seed(7), mode)
    out = augment(x, torch.Generator().manual_seed(7), mode)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for k in range(24):
        np.testing.assert_array_equal(out[k].numpy(), reference(x[k].numpy(), *params_of(p, k)), err_msg=f"image {k}")


def test_crop_and_flip_match_pad_slice_flip() -> None:
    """Independent of the reference: torchvision's RandomCrop + flip as numpy pad, slice and fliplr."""
    x = images(64, seed=2)
    p = sample_params(64, torch.Generator().manual_seed(3), "standard")
    out = apply_params(x, p)
    for k in range(64):
        dy, dx, flip, _ = params_of(p, k)
        top, left = dy + 4, dx + 4   # RandomCrop's i, j in 0..8
        want = np.pad(x[k].numpy(), ((0, 0), (4, 4), (4, 4)))[:, top:top + 32, left:left + 32]
        np.testing.assert_array_equal(out[k].numpy(), want[:, :, ::-1] if flip else want)


def test_rotation_matches_pil() -> None:
    """PIL's Image.rotate(angle, NEAREST, fillcolor=0), which the reference implementation used; PIL's fixed-point
    maths may pick a neighbour on a few boundary pixels, so require near-total agreement."""
    angles = torch.linspace(-15, 15, 61, dtype=torch.float64)
    n = len(angles)
    x = images(n, seed=4)
    zero = torch.zeros(n, dtype=torch.int64)
    out = apply_params(x, AugmentParams(zero, zero, torch.zeros(n, dtype=torch.bool), angles))
    agree = []
    for k in range(n):
        pil = Image.fromarray(x[k].permute(1, 2, 0).numpy()).rotate(float(angles[k]), Image.NEAREST, fillcolor=0)
        agree.append((np.asarray(pil) == out[k].permute(1, 2, 0).numpy()).all(-1).mean())
    assert min(agree) > 0.99 and np.mean(agree) > 0.999, (min(agree), np.mean(agree))


def test_whole_pipeline_matches_pil() -> None:
    x = images(32, seed=5)
    p = sample_params(32, torch.Generator().manual_seed(5), "seed")
    out = apply_params(x, p)
    agree = []
    for k in range(32):
        dy, dx, flip, angle = params_of(p, k)
        img = np.pad(x[k].permute(1, 2, 0).numpy(), ((4, 4), (4, 4), (0, 0)))[dy + 4:dy + 36, dx + 4:dx + 36]
        pil = Image.fromarray(np.ascontiguousarray(img[:, ::-1] if flip else img))
        want = np.asarray(pil.rotate(angle, Image.NEAREST, fillcolor=0))
        agree.append((want == out[k].permute(1, 2, 0).numpy()).all(-1).mean())
    assert min(agree) > 0.99, min(agree)


# ------------------------------------------------------------------------------------ statistics


def test_parameter_statistics() -> None:
    n = 20_000
    p = sample_params(n, torch.Generator().manual_seed(0), "seed")
    assert abs(p.flip.float().mean().item() - 0.5) < 0.02
    for off in (p.dy, p.dx):
        counts = torch.bincount(off + 4, minlength=9)
        assert off.min() == -4 and off.max() == 4 and len(counts) == 9
        assert (counts.float() / n - 1 / 9).abs().max() < 0.012
    a = p.angle
    assert a is not None and a.min() >= -15 and a.max() <= 15
    assert a.min() < -14.9 and a.max() > 14.9 and abs(a.mean().item()) < 0.25
    hist = torch.histc(a.float(), bins=10, min=-15, max=15) / n
    assert (hist - 0.1).abs().max() < 0.012
    assert not (p.dy == p.dx).all()
    assert sample_params(10, torch.Generator(), "standard").angle is None


def _masked_range(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    big = 1 << 20
    return values.masked_fill(~keep, big).amin((1, 2)), values.masked_fill(~keep, -big).amax((1, 2))


def test_crop_offsets_and_flips_seen_in_the_images() -> None:
    n = 4000
    out = augment(coordinate_images(n), torch.Generator().manual_seed(1), "standard")
    p = sample_params(n, torch.Generator().manual_seed(1), "standard")
    rows, cols = out[:, 0].long() - 1, out[:, 1].long() - 1   # -1: zero fill
    keep = rows >= 0
    ys, xs = torch.arange(32).view(1, 32, 1), torch.arange(32).view(1, 1, 32)
    lo, hi = _masked_range(rows - ys, keep)
    assert torch.equal(lo, hi), "one vertical offset per image"
    plain_lo, plain_hi = _masked_range(cols - xs, keep)
    mirror_lo, mirror_hi = _masked_range(cols + xs, keep)
    flipped = mirror_lo == mirror_hi
    assert torch.equal(flipped, plain_lo != plain_hi), "each image is either shifted or mirrored"
    dy, dx = lo, torch.where(flipped, mirror_lo - 31, plain_lo)
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    assert dy.min() == -4 and dy.max() == 4 and dx.min() == -4 and dx.max() == 4
    assert torch.equal(dy, p.dy) and torch.equal(dx, p.dx) and torch.equal(flipped, p.flip)
    # Zero fill exactly where the shifted source leaves the image, and nowhere else.
    assert torch.equal((~keep).sum((1, 2)), 32 * 32 - (32 - dy.abs()) * (32 - dx.abs()))
    assert (out.permute(1, 0, 2, 3)[:, ~keep] == 0).all()


def test_rotation_angles_seen_in_the_images() -> None:
    n = 2000
    out = augment(coordinate_images(n), torch.Generator().manual_seed(2), "seed")
    p = sample_params(n, torch.Generator().manual_seed(2), "seed")
    keep = (out[:, 0] > 0).double()
    src = torch.stack([out[:, 1], out[:, 0]], 1).double() - 1               # (n, 2, 32, 32) source x, y
    grid = torch.arange(32, dtype=torch.float64)
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    dst = torch.stack([xs, ys]).expand(n, 2, 32, 32)
    count = keep.sum((1, 2)).view(n, 1, 1, 1)
    centre = lambda t: t - (t * keep[:, None]).sum((2, 3), keepdim=True) / count  # noqa: E731
    src, dst = centre(src) * keep[:, None], centre(dst) * keep[:, None]
    m = torch.einsum("nihw,njhw->nij", src, dst)                              # least squares: src ~ R dst
    m[:, 0] *= torch.where(torch.linalg.det(m) < 0, -1.0, 1.0).view(n, 1)   # undo the flip's mirror
    estimated = torch.rad2deg(torch.atan2(m[:, 1, 0] - m[:, 0, 1], m[:, 0, 0] + m[:, 1, 1]))
    assert estimated.abs().max() < 15.5 and estimated.min() < -14 and estimated.max() > 14
    # Nearest-pixel sampling blurs the fit a little; a wrong direction or centre would be off by degrees.
    err = (estimated - p.angle).abs()
    assert err.mean() < 0.5 and err.max() < 2.5, "a positive angle must turn the image as PIL's rotate does"


def test_zero_fill_and_no_interpolation() -> None:
    white = torch.full((4, 3, 32, 32), 255, dtype=torch.uint8)
    zero = torch.zeros(4, dtype=torch.int64)
    angles = torch.tensor([15.0, -15.0, 7.0, 0.0], dtype=torch.float64)
    out = apply_params(white, AugmentParams(zero, zero, torch.zeros(4, dtype=torch.bool), angles))
    assert set(out.unique().tolist()) == {0, 255}
    for k in range(3):
        assert (out[k, :, 0, 0] == 0).all() and (out[k, :, 31, 31] == 0).all() and (out[k, :, 16, 16] == 255).all()
    assert (out[3] == 255).all()
    assert (out[0] == 0).sum() > (out[2] == 0).sum() > 0
    shifted = apply_params(white, AugmentParams(zero + 4, zero - 4, torch.ones(4, dtype=torch.bool), None))
    # dy = 4: the bottom 4 rows are fill; dx = -4 fills the left 4 columns, which the flip moves right.
    assert (shifted[:, :, :28, :28] == 255).all() and (shifted[:, :, 28:] == 0).all() and (shifted[..., 28:] == 0).all()
    many = augment(white.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0), "seed")
    assert set(many.unique().tolist()) == {0, 255}


def test_none_and_repeatability() -> None:
    x = images(16)
    assert augment(x, torch.Generator(), "none") is x
    a = augment(x, torch.Generator().manual_seed(11))
    b = augment(x, torch.Generator().manual_seed(11))
    c = augment(x, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(11)
    assert torch.equal(augment(x, g), a) and not torch.equal(augment(x, g), a)  # the generator advances
    assert augment(x[:0], torch.Generator()).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown augment"):
        augment(x, torch.Generator(), "random")
    with pytest.raises(ValueError, match="uint8"):
        augment(x.float(), torch.Generator())
    assert AUGMENTS == ("reference", "standard", "none", "airbench")


def test_seed_is_an_alias_of_reference() -> None:
    assert canonical_augment("seed") == "reference" and AUGMENT_ALIASES == {"seed": "reference"}
    assert [canonical_augment(m) for m in (*AUGMENTS, "random")] == [*AUGMENTS, "random"]
    x = images(32, seed=4)
    out = {m: augment(x, torch.Generator().manual_seed(6), m) for m in ("seed", "reference")}
    assert torch.equal(out["seed"], out["reference"])
    assert torch.equal(augment(x, torch.Generator().manual_seed(6)), out["reference"]), "reference is the default"
    assert not torch.equal(out["reference"], augment(x, torch.Generator().manual_seed(6), "standard"))
    p, q = (sample_params(32, torch.Generator().manual_seed(6), m) for m in ("seed", "reference"))
    assert p.angle is not None and q.angle is not None and torch.equal(p.angle, q.angle)
    assert torch.equal(p.dy, q.dy) and torch.equal(p.dx, q.dx) and torch.equal(p.flip, q.flip)
    epochs = {m: list(train_batches(x, torch.arange(32), 8, seed=0, epoch=0, generator=torch.Generator().manual_seed(6),
                                    mode=m)) for m in ("seed", "reference")}
    for (xs, ys), (xr, yr) in zip(epochs["seed"], epochs["reference"], strict=True):
        assert torch.equal(xs, xr) and torch.equal(ys, yr)


def test_augment_stream_seed() -> None:
    assert STREAM_STRIDE == 1_000_003
    assert augment_stream_seed(7, 0) == 7 and augment_stream_seed(7, 2) == 7 + 2 * 1_000_003
    assert augment_stream_seed(7, 2, epoch=5) == 7 + 2 * 1_000_003 + 5


def test_normalize() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(2, 3, 1, 1)
    y = normalize(x)
    assert y.dtype == torch.float32 and y.min() == -1 and y.max() == 1
    want = (x.double() / 255 - 0.5) / 0.5
    assert (y.double() - want).abs().max() < 1e-6
    bf = normalize(x, torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and (bf.double() - want).abs().max() < 1e-2
    assert normalize(x, torch.float64).dtype == torch.float64


def test_to_device_uint8() -> None:
    nhwc = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    t = to_device_uint8(nhwc, "cpu")
    assert t.shape == (5, 3, 32, 32) and t.dtype == torch.uint8 and t.is_contiguous()
    np.testing.assert_array_equal(t.numpy(), nhwc.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError):
        to_device_uint8(nhwc.astype(np.float32), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu() -> None:
    x = images(256, seed=9)
    p = sample_params(256, torch.Generator().manual_seed(1), "seed")
    assert p.angle is not None
    pc = AugmentParams(p.dy.cuda(), p.dx.cuda(), p.flip.cuda(), p.angle.cuda())
    assert torch.equal(apply_params(x.cuda(), pc).cpu(), apply_params(x, p))
    g = torch.Generator(device="cuda").manual_seed(0)
    out = augment(x.cuda(), g)
    assert out.device.type == "cuda"
    assert torch.equal(out, augment(x.cuda(), torch.Generator(device="cuda").manual_seed(0)))
    with pytest.raises(ValueError, match="generator"):
        augment(x.cuda(), torch.Generator())
    xb, yb = next(train_batches(x.cuda(), torch.arange(256), 64, seed=0, epoch=0, generator=g))
    assert xb.device.type == "cuda" and yb.device.type == "cuda"
    xc, yc = x.cuda(), torch.arange(256, device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the hot path raises
    try:
        for _ in train_batches(xc, yc, 64, seed=0, epoch=1, generator=g, mode="seed"):
            pass
        for _ in epoch_batches(xc, yc, 64, seed=0, epoch=1, memory_format=torch.channels_last):
            pass
        for _ in eval_batches(xc, yc, 64):
            pass
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ------------------------------------------------------------------------------------- iterators


def epoch_labels(n: int, batch_size: int, world_size: int, seed: int = 0, epoch: int = 0) -> list[list[torch.Tensor]]:
    """Per rank, the label batches (labels are sample indices) of one epoch, in mode "none"."""
    x = images(n)
    return [[y for _, y in train_batches(x, torch.arange(n), batch_size, seed=seed, epoch=epoch,
                                         generator=torch.Generator().manual_seed(r), mode="none",
                                         rank=r, world_size=world_size)]
            for r in range(world_size)]


@pytest.mark.parametrize("n,batch_size,world_size", [
    (100, 10, 1), (101, 10, 1), (102, 10, 1), (97, 8, 2), (99, 8, 2), (100, 12, 3), (101, 12, 4), (7, 4, 2),
    (103, 9, 2),
])
def test_train_epoch_covers_each_index_once(n: int, batch_size: int, world_size: int) -> None:
    per_rank = epoch_labels(n, batch_size, world_size)
    steps = steps_per_epoch(n, batch_size, world_size)
    assert all(len(batches) == steps for batches in per_rank), "ranks must stay in step"
    seen = torch.cat([y for batches in per_rank for y in batches])
    assert len(seen.unique()) == len(seen), "an index came twice"
    rest = n % batch_size
    dropped = rest if rest and rest // world_size < 2 else 0
    assert len(seen) == n - dropped
    order = epoch_order(n, 0, 0)
    assert set(order[n - dropped:].tolist()).isdisjoint(seen.tolist()), "only the final short batch may be dropped"
    for step in range(steps):  # the ranks' shares of each global batch, in rank order, are that batch
        joined = torch.cat([per_rank[r][step] for r in range(world_size)])
        assert torch.equal(joined, order[step * batch_size:step * batch_size + len(joined)])
        assert min(len(per_rank[r][step]) for r in range(world_size)) >= 2


def test_single_sample_final_batch_is_dropped() -> None:
    (batches,) = epoch_labels(2 * 16 + 1, 16, 1)
    assert [len(b) for b in batches] == [16, 16]
    (batches,) = epoch_labels(2 * 16 + 2, 16, 1)
    assert [len(b) for b in batches] == [16, 16, 2]


def test_epoch_order_depends_on_seed_and_epoch_only() -> None:
    a, b = epoch_labels(64, 8, 1, seed=1, epoch=2), epoch_labels(64, 8, 1, seed=1, epoch=2)
    assert all(torch.equal(u, v) for u, v in zip(a[0], b[0]))
    for other in (epoch_labels(64, 8, 1, seed=1, epoch=3), epoch_labels(64, 8, 1, seed=2, epoch=2)):
        assert not torch.equal(torch.cat(a[0]), torch.cat(other[0]))
    assert not torch.equal(torch.cat(a[0]), torch.arange(64)), "the epoch must be shuffled"


def test_train_batches_augment_from_the_generator_only() -> None:
    x = images(64)
    run = lambda gseed, mode="seed": list(train_batches(x, torch.arange(64), 16, seed=0, epoch=0,  # noqa: E731
                                                       generator=torch.Generator().manual_seed(gseed), mode=mode))
    a, b, c = run(1), run(1), run(2)
    for (xa, ya), (xb, yb), (xc, yc) in zip(a, b, c):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ya, yc)
        assert not torch.equal(xa, xc)
        assert xa.dtype == torch.float32 and ya.dtype == torch.int64 and xa.shape == (16, 3, 32, 32)
        assert xa.min() >= -1 and xa.max() <= 1
    for xn, yn in run(0, "none"):
        assert torch.equal(xn, normalize(x[yn]))
    xs, ys = next(run(0, "standard").__iter__())
    want = augment(x[ys], torch.Generator().manual_seed(0), "standard")
    assert torch.equal(xs, normalize(want))
    xbf, _ = next(train_batches(x, np.arange(64), 16, seed=0, epoch=0, generator=torch.Generator(),
                                dtype=torch.bfloat16))
    assert xbf.dtype == torch.bfloat16


def test_train_batches_resume_from_a_step() -> None:
    """start=k yields the epoch's steps k.. as they would have come, drawing nothing for the skipped ones."""
    x = images(50)
    full = list(train_batches(x, torch.arange(50), 8, seed=3, epoch=1, generator=torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # the generator as a checkpoint after step 2 would hold it
        augment(x[:8], g)
    tail = list(train_batches(x, torch.arange(50), 8, seed=3, epoch=1, generator=g, start=2))
    assert len(tail) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_train_batches_argument_checks() -> None:
    x = images(8)
    with pytest.raises(ValueError, match="per rank"):
        train_batches(x, torch.arange(8), 3, seed=0, epoch=0, generator=torch.Generator(), world_size=2)
    with pytest.raises(ValueError, match="rank"):
        train_batches(x, torch.arange(8), 4, seed=0, epoch=0, generator=torch.Generator(), rank=2, world_size=2)
    with pytest.raises(ValueError, match="labels"):
        train_batches(x, torch.arange(7), 4, seed=0, epoch=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="per rank"):
        steps_per_epoch(10, 1)


# ------------------------------------------------------------------- a whole epoch at once (--compile step)


def test_augment_in_chunks_is_augment_at_once() -> None:
    x = images(50, seed=4)
    whole = augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(augment(x, torch.Generator().manual_seed(7), chunk=16), whole)
    assert not torch.equal(whole, x)


@pytest.mark.parametrize("n,batch_size,world_size", [(101, 10, 1), (99, 8, 2), (101, 12, 4)])
def test_epoch_batches_take_the_samples_of_train_batches(n: int, batch_size: int, world_size: int) -> None:
    x = images(n)
    for rank in range(world_size):
        split = dict(rank=rank, world_size=world_size)
        per_batch = list(train_batches(x, torch.arange(n), batch_size, seed=2, epoch=3, generator=torch.Generator(),
                                       mode="none", **split))
        at_once = list(epoch_batches(x, torch.arange(n), batch_size, seed=2, epoch=3, mode="none", **split))
        assert len(at_once) == len(per_batch) == steps_per_epoch(n, batch_size, world_size)
        for (xa, ya), (xb, yb) in zip(at_once, per_batch):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)  # the same samples, in the same order


def test_epoch_batches_are_seeded_by_seed_epoch_and_rank_alone() -> None:
    x = images(64)
    draw = lambda seed=1, epoch=2, rank=0, **kw: torch.cat([b for b, _ in epoch_batches(  # noqa: E731
        x, torch.arange(64), 16, seed=seed, epoch=epoch, rank=rank, world_size=2, **kw)])
    a = draw()
    assert torch.equal(a, draw())
    for other in (draw(seed=2), draw(epoch=3), draw(rank=1)):
        assert not torch.equal(a, other)
    # The rank's samples augmented in one pass with the generator of (seed, epoch, rank), then normalised.
    labels = torch.cat([y for _, y in epoch_batches(x, torch.arange(64), 16, seed=1, epoch=2, world_size=2)])
    want = augment(x[labels], torch.Generator().manual_seed(epoch_augment_seed(1, 2, 0)))
    assert torch.equal(a, normalize(want))
    assert len({epoch_augment_seed(s, e, r) for s in range(3) for e in range(3) for r in range(3)}) == 27


def test_epoch_batches_resume_from_a_step_and_lay_out_the_epoch() -> None:
    x = images(50)
    common = dict(seed=3, epoch=1, memory_format=torch.channels_last)
    full = list(epoch_batches(x, torch.arange(50), 8, **common))
    tail = list(epoch_batches(x, torch.arange(50), 8, start=2, **common))
    assert len(tail) == len(full) - 2 == 5
    for (xa, ya), (xb, yb) in zip(full[2:], tail):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert all(xb.is_contiguous(memory_format=torch.channels_last) for xb, _ in full)
    assert all(xb.dtype == torch.float32 and -1 <= xb.min() and xb.max() <= 1 for xb, _ in full)


@pytest.mark.parametrize("n,batch_size,world_size", [(10, 4, 1), (10, 4, 2), (11, 6, 3), (3, 8, 4), (100, 32, 1)])
def test_eval_batches_in_order_each_once(n: int, batch_size: int, world_size: int) -> None:
    x = images(n)
    ys = []
    for r in range(world_size):
        for xb, yb in eval_batches(x, torch.arange(n), batch_size, rank=r, world_size=world_size):
            assert 1 <= len(yb) <= max(1, batch_size // world_size)
            assert torch.equal(xb, normalize(x[yb]))
            ys.append(yb)
    assert torch.equal(torch.cat(ys), torch.arange(n))


def test_fake_set_is_learnable_through_the_pipeline() -> None:
    """A tiny CNN, two epochs of augmented fake data, beats chance (10%) by far."""
    torch.manual_seed(0)
    d = load_fake()
    xtr, xte = to_device_uint8(d.train_images, "cpu"), to_device_uint8(d.test_images, "cpu")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(2):
        for xb, yb in train_batches(xtr, d.train_labels, 64, seed=0, epoch=epoch, generator=g):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in eval_batches(xte, d.test_labels, 128))
    assert correct / len(xte) > 0.3
