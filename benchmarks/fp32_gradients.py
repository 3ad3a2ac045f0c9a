"""fp32 gradients against float64, per layout, and what explains their gap: ReLU and max-pool decisions.

    python benchmarks/fp32_gradients.py --batches 4 --width 0.25
    python benchmarks/fp32_gradients.py --ops


For each random batch: the reference VGG16's gradients in fp32 (contiguous and channels-last) against the same
model in float64, as the median relative error over its parameters (the conv biases before a BatchNorm left out:
their true gradient is 0), beside how many ReLU signs and max-pool choices the fp32 forward makes differently from
float64. With --ops: the forward's rounding of BatchNorm (training statistics) and of the 3x3 convolution alone,
per layout, at three of the VGG's shapes, against float64 (what makes channels-last's decisions flip). See
docs/fp32.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sbattn import create_model  # noqa: E402

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def gradients(seed: int, fmt, dtype, width: float, attention: str):
    torch.manual_seed(seed)
    x, y = torch.randn(32, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (32,))
    torch.manual_seed(1)
    model = create_model("vgg16", attention=attention, width=width).to(dtype).to(memory_format=fmt).train()
    pools, signs = [], []
    for m in model.modules():
        if isinstance(m, nn.MaxPool2d):
            m.register_forward_hook(lambda _, i, o: pools.append(F.max_pool2d(i[0].detach(), 2, return_indices=True)[1]))
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda _, i, o: signs.append(o.detach() > 0))
    F.cross_entropy(model(x.to(dtype).contiguous(memory_format=fmt)), y).backward()
    grads = {n: p.grad.double() for n, p in model.named_parameters()
             if not (isinstance(dict(model.named_modules())[n.rsplit(".", 1)[0]], nn.Conv2d) and n.endswith("bias"))}
    return grads, pools, signs


def forward_errors() -> None:
    """Max |fp32 - float64| / max |float64| of BatchNorm2d's training forward and of a 3x3 conv, per layout."""
    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()
    torch.manual_seed(0)
    for channels, size in ((64, 32), (256, 8), (512, 2)):
        x64 = torch.randn(32, channels, size, size, dtype=torch.float64) * 3 + 1
        w = (torch.randn(channels, channels, 3, 3, dtype=torch.float64) / (3 * channels ** 0.5)).float()
        for name, fmt in LAYOUTS.items():
            x = x64.float().contiguous(memory_format=fmt)
            bn = rel(F.batch_norm(x, None, None, training=True), F.batch_norm(x.double(), None, None, training=True))
            conv = rel(F.conv2d(x, w.contiguous(memory_format=fmt), padding=1), F.conv2d(x.double(), w.double(),
                                                                                         padding=1))
            print(f"32x{channels}x{size}x{size} {name:13s} BatchNorm forward {bn:.1e}, conv forward {conv:.1e}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--attention", default="none")
    p.add_argument("--ops", action="store_true", help="the single operators' forward rounding instead")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.ops:
        forward_errors()
        return 0
    for seed in range(args.batches):
        ref, ref_pools, ref_signs = gradients(seed, torch.contiguous_format, torch.float64, args.width, args.attention)
        for name, fmt in LAYOUTS.items():
            g, pools, signs = gradients(seed, fmt, torch.float32, args.width, args.attention)
            errs = sorted(((g[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref)
            pool_flips = sum(int((a != b).sum()) for a, b in zip(pools, ref_pools))
            sign_flips = sum(int((a != b).sum()) for a, b in zip(signs, ref_signs))
            print(f"batch {seed} {name:13s} median relative error {errs[len(errs) // 2]:.1e}, worst {errs[-1]:.1e}; "
                  f"ReLU signs differing from float64: {sign_flips}, max-pool choices: {pool_flips}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
