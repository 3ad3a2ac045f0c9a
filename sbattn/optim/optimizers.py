"""Optimisers by name. Each takes the model and the recipe's numbers (Hyper) and returns a torch optimiser whose
parameter groups may carry "train_steps": the group learns for that many steps, then holds still
(hold_finished_groups), as airbench freezes its whitening bias after 3 epochs."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["OPTIMIZERS", "Hyper", "register_optimizer", "build_optimizer", "hold_finished_groups"]


@dataclass(frozen=True)
class Hyper:
    """A recipe's optimiser numbers, in the recipe's own units (what each optimiser makes of them is its own)."""

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    bn_bias_lr: float = 1.0  # BatchNorm biases learn this many times faster (their decay unchanged)
    frozen_after: dict[str, int] | None = None  # a parameter's name -> the steps it trains for


OptimizerBuilder = Callable[[nn.Module, Hyper], torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptimizerBuilder] = {}


def register_optimizer(fn: OptimizerBuilder) -> OptimizerBuilder:
    """Register `fn(model, hyper)` under its name; a builder that cannot be called so is refused now, in one line."""
    try:
        inspect.signature(fn).bind(nn.Module(), Hyper(0.1, 0.9, 0.0, 2))
    except TypeError as e:
        raise TypeError(f"optimizer {fn.__name__!r} must take (model, hyper): {e}") from None
    OPTIMIZERS[fn.__name__] = fn
    return fn


def build_optimizer(name: str, model: nn.Module, hyper: Hyper) -> torch.optim.Optimizer:
    """The optimiser registered as `name` on `model`'s parameters."""
    return OPTIMIZERS[name](model, hyper)


def _groups(model: nn.Module, hyper: Hyper, lr: float, decay: Callable[[float], float]) -> list[dict]:
    """The model's parameters as groups: one, in the model's order, when nothing sets a group apart (the reference's
    optimiser, whose checkpoints hold one group); else the BatchNorm biases at bn_bias_lr, each frozen parameter in
    a group of its own, the rest. `decay(group_lr)`: the group's weight decay."""
    frozen = hyper.frozen_after or {}
    if hyper.bn_bias_lr == 1.0 and not frozen:
        return [dict(params=list(model.parameters()), lr=lr, weight_decay=decay(lr))]
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, _BatchNorm) and m.bias is not None}
    rest, biases, held = [], [], []
    for name, p in model.named_parameters():
        if name in frozen:
            held.append(dict(params=[p], lr=lr, weight_decay=decay(lr), train_steps=frozen[name]))
        elif id(p) in norm_biases:
            biases.append(p)
        else:
            rest.append(p)
    missing = sorted(set(frozen) - {n for n, _ in model.named_parameters()})
    if missing:
        raise ValueError(f"no parameter named {', '.join(missing)} to freeze")
    bias_lr = lr * hyper.bn_bias_lr
    groups = [dict(params=rest, lr=lr, weight_decay=decay(lr)), *held]
    return groups + ([dict(params=biases, lr=bias_lr, weight_decay=decay(bias_lr))] if biases else [])


@register_optimizer
def sgd(model: nn.Module, hyper: Hyper) -> torch.optim.Optimizer:
    """The reference implementation's: SGD with Nesterov momentum (0.9 there), the learning rate and the weight
    decay as PyTorch's SGD takes them (the decay coupled to the rate)."""
    groups = _groups(model, hyper, hyper.lr, lambda lr: hyper.weight_decay)
    return torch.optim.SGD(groups, lr=hyper.lr, momentum=hyper.momentum, nesterov=True, foreach=True)


@register_optimizer
def sgd_decoupled(model: nn.Module, hyper: Hyper) -> torch.optim.Optimizer:
    """airbench's form of Nesterov SGD: the loss summed over the batch, the learning rate per 1024 examples and
    divided by Nesterov's gain 1 + 1/(1 - momentum), so that momentum changes no step size; the weight decay per
    1024 examples, its strength independent of the rate (a group at a higher rate decays no faster)."""
    kilostep = 1024 * (1 + 1 / (1 - hyper.momentum))
    lr = hyper.lr / kilostep
    decay = hyper.weight_decay * hyper.batch_size / kilostep
    groups = _groups(model, hyper, lr, lambda group_lr: decay / group_lr)
    return torch.optim.SGD(groups, lr=lr, momentum=hyper.momentum, nesterov=True, foreach=True)


def hold_finished_groups(optimizer: torch.optim.Optimizer, step: int) -> None:
    """Set to 0 the learning rate of each group whose "train_steps" are done by `step` (steps finished): SGD then
    leaves its parameters exactly as they are (p - 0 * update), whatever the schedule wrote."""
    for group in optimizer.param_groups:
        if "train_steps" in group and step >= group["train_steps"]:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(0.0)
            else:
                group["lr"] = 0.0
