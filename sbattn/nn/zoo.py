"""SB's competitors, taken from timm (the field's reference implementations), under the registry's names:

    eca     ECA, Wang et al. 2020: a 1-D convolution across the squeezed channels, then a sigmoid gate
    cbam    CBAM, Woo et al. 2018: channel attention (mean and max squeezes, one MLP), then spatial attention
    gc      global context, Cao et al. 2019, scaling form: x * sigmoid(MLP(attention-pooled context))
    gca     global context, additive form: x + MLP(context), the closest relative of SB's x + lambda * act(...)
    timm:se timm's SEModule, Hu et al.'s SE with no BatchNorm in its branch ("se" is the reference implementation's,
            BatchNorm after both layers of the branch)

The names are timm's own (`timm.layers.get_attn`), timm:se's prefixed to tell it from sbattn's se. Registered when
sbattn.nn is imported, timm imported only when a block is built: `import sbattn` never needs timm, and without it building one of these is a ConfigError that
names the extra (pip install "sbattn[timm]").
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from types import ModuleType
from typing import Any, Optional

from torch import nn

from ..errors import ConfigError
from .attention import register_attention
from .branch import DeviceLike, DTypeLike

__all__ = ["TimmBlock", "ZOO", "timm_module"]

EXTRA = 'pip install "sbattn[timm]"'


def timm_module(kind: str, path: str, what: str = "attention") -> ModuleType:
    """timm's module `path` (timm.layers.cbam, ...) for sbattn's `what` `kind`; a one-line ConfigError naming the
    extra when timm is missing or cannot be imported."""
    try:
        return importlib.import_module(path)
    except Exception as e:  # a timm that imports a torchvision built for another torch fails with RuntimeError
        if importlib.util.find_spec("timm") is None:
            why = "is not installed"
        else:
            why = f"cannot be imported ({type(e).__name__}: {e})"
        raise ConfigError(f"{what} {kind!r} is timm's, and timm {why}: {EXTRA}") from None


class TimmBlock:
    """Builds timm's `module`.`class_name` as a registered attention kind: create_attention(kind, channels,
    ratio=...).

    ratio is timm's rd_ratio (the hidden width over the channels), for the modules that have a hidden layer;
    fixed: options this kind always passes (GlobalContext's fuse_add and fuse_scale).
    """

    def __init__(self, kind: str, module: str, class_name: str, uses_ratio: bool = True, **fixed: Any) -> None:
        self.kind, self.module, self.class_name = kind, module, class_name
        self.uses_ratio, self.fixed = uses_ratio, fixed

    def __call__(self, channels: int, ratio: Optional[float] = None, *, device: DeviceLike = None,
                 dtype: DTypeLike = None, **options: Any) -> nn.Module:
        cls = self.block_class()
        if ratio is not None and self.uses_ratio:
            options.setdefault("rd_ratio", ratio)
        try:
            return cls(channels, **self.fixed, **options, device=device, dtype=dtype)
        except TypeError as e:
            accepted = ", ".join(inspect.signature(cls).parameters)
            raise ValueError(f"timm's {self.class_name} ({self.kind}): {e}; it takes {accepted}") from None

    def block_class(self) -> type:
        """timm's class, timm imported (a one-line ConfigError when it cannot be)."""
        return getattr(timm_module(self.kind, self.module), self.class_name)

    def block_type(self) -> type | None:
        """timm's class, once timm is imported (no module of it can exist before)."""
        module = sys.modules.get(self.module)
        return getattr(module, self.class_name, None) if module is not None else None

    def __repr__(self) -> str:
        fixed = "".join(f", {k}={v}" for k, v in self.fixed.items())
        return f"TimmBlock({self.kind!r}, {self.module}.{self.class_name}{fixed})"


ZOO = (
    # ECA has no hidden layer: its 1-D kernel's size follows the channel count.
    TimmBlock("eca", "timm.layers.eca", "EcaModule", uses_ratio=False),
    TimmBlock("cbam", "timm.layers.cbam", "CbamModule"),
    TimmBlock("gc", "timm.layers.global_context", "GlobalContext", fuse_add=False, fuse_scale=True),
    TimmBlock("gca", "timm.layers.global_context", "GlobalContext", fuse_add=True, fuse_scale=False),
    # timm's SE (Hu et al.'s: no BatchNorm in the branch), beside "se", the reference implementation's.
    TimmBlock("timm:se", "timm.layers.squeeze_excite", "SEModule"),
)
for _block in ZOO:
    register_attention(_block.kind)(_block)
