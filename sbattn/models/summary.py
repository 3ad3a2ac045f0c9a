"""A model's layer table, parameter count and FLOPs per image, with the attention blocks' share.

FLOPs are counted by torch.utils.flop_counter on a real forward (and forward plus backward) pass: every
convolution and matrix product, 2 FLOPs a multiply-add. Elementwise work (BatchNorm, ReLU, pooling, the
attention's mean, shift and gate) is not counted; it costs memory traffic more than arithmetic. A convolution's
backward is counted here as what it computes, each gradient asked for (the input's, the weights') a convolution of
the forward's size: torch's own formula ignores the groups in the weights' gradient, and counts a depthwise
convolution's backward as that of a dense one (timm's mobilenetv3_large_100 at 32x32: forward 0.011 GFLOP,
forward and backward 0.247 by torch's count, 0.033 by this one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ..nn.attention import is_attention

__all__ = ["Summary", "summarize", "format_summary"]


@dataclass
class Row:
    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    flops: int


@dataclass
class Summary:
    rows: list[Row] = field(default_factory=list)
    params: int = 0
    attention_params: int = 0
    flops_forward: int = 0          # per image
    flops_train: int = 0            # forward plus backward, per image
    attention_flops_forward: int = 0
    attention_flops_train: int = 0
    attention_blocks: int = 0
    image_size: int = 32


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The table's rows: leaf modules, with each attention block as one unit."""
    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if is_attention(child) or not any(True for _ in child.children()):
                yield full, child
            else:
                yield from walk(child, full)
    return list(walk(model, ""))


def _conv_backward_flops(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: Any,
                         _stride: Any, _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any,
                         _groups: int, output_mask: list[bool], out_shape: Any, **kwargs: Any) -> int:
    """A convolution's backward: each gradient asked for costs one convolution of the forward's size (whose weight
    shape, (out, in / groups, ...), already holds the groups)."""
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed) * sum(map(bool, output_mask[:2]))


_COUNTS = {torch.ops.aten.convolution_backward: _conv_backward_flops}


def _per_module_flops(counter: FlopCounterMode, root: str) -> dict[str, int]:
    return {name.removeprefix(root + ".") if name != root else "": sum(ops.values())
            for name, ops in counter.get_flop_counts().items()}


def summarize(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32), batch: int = 2) -> Summary:
    """Count parameters and FLOPs per image on a batch of random inputs (batch >= 2 for BatchNorm in training)."""
    units = _units(model)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
             for n, m in units]
    root = type(model).__name__
    was_training = model.training
    x = torch.randn(batch, *input_size)
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_COUNTS) as forward:
            model(x)
        model.train()
        with FlopCounterMode(display=False, custom_mapping=_COUNTS) as train:
            model(x).sum().backward()
        model.zero_grad(set_to_none=True)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    fwd, both = _per_module_flops(forward, root), _per_module_flops(train, root)
    summary = Summary(params=sum(p.numel() for p in model.parameters()), image_size=input_size[-1],
                      flops_forward=forward.get_total_flops() // batch, flops_train=train.get_total_flops() // batch)
    for name, module in units:
        params = sum(p.numel() for p in module.parameters())
        summary.rows.append(Row(name, type(module).__name__, shapes.get(name, ()), params, fwd.get(name, 0) // batch))
        if is_attention(module):
            summary.attention_blocks += 1
            summary.attention_params += params
            summary.attention_flops_forward += fwd.get(name, 0) // batch
            summary.attention_flops_train += both.get(name, 0) // batch
    return summary


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.3f}%" if whole else "-"


def format_summary(summary: Summary, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'layer':<28}{'type':<16}{'output':>16}{'params':>12}{'MFLOP':>10}")
    for r in summary.rows:
        shape = "x".join(map(str, r.shape))
        lines.append(f"{r.name:<28}{r.kind:<16}{shape:>16}{r.params:>12,}{r.flops / 1e6:>10.2f}")
    s = summary
    lines += [
        f"parameters: {s.params:,} (attention: {s.attention_params:,} in {s.attention_blocks} blocks, "
        f"{_pct(s.attention_params, s.params)})",
        f"GFLOP per {s.image_size}x{s.image_size} image: forward {s.flops_forward / 1e9:.3f}, "
        f"forward+backward {s.flops_train / 1e9:.3f} "
        f"(attention: {_pct(s.attention_flops_forward, s.flops_forward)} and "
        f"{_pct(s.attention_flops_train, s.flops_train)}; convolutions and matrix products only)",
    ]
    return "\n".join(lines)
