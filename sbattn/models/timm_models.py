"""SB in timm by name: models for `timm.create_model`, and "sb" where timm takes an attention by string.

    timm.create_model("sbresnet50", num_classes=10)                  # SB where seresnet50 has SE
    timm.create_model("vgg16_sb", checkpoint_path="results/vgg16_0.5_True_False_tanh.pth")
    timm.create_model("resnet50", block_args=dict(attn_layer="sb"))   # the string, once sbattn is imported

Registered when timm is imported, before or after sbattn (`register_when_timm_is_imported`): `import sbattn`
itself never imports timm. timm offers no entry point for models or attention strings: models go through its
public `register_model` (in this module, with this module's `default_cfgs`, as timm's own model modules do), and
the attention string through its public `get_attn`, wrapped (timm's is an if-chain with no registry): "sb" gives
TIMM_SB, every other string timm's own block (docs/interop.md).
"""
from __future__ import annotations

import functools
import importlib
import importlib.abc
import sys
import warnings
from typing import Any, Callable, Optional, Sequence

from torch import nn

from ..nn.attention import ShiftBalance, create_attention
from ..nn.replace import TIMM_STYLE_SB, replace_attention, se_options
from ..nn.zoo import timm_module
from .registry import create_model as create_sbattn_model
from .registry import register_prefix

__all__ = ["TIMM_SB", "TIMM_RESNETS", "CIFAR_MODELS", "TIMM_PREFIX", "create_timm_model", "register_with_timm",
           "register_when_timm_is_imported"]

TIMM_PREFIX = "timm:"  # --arch timm:<name>: any model timm.create_model builds

# SB where timm puts SE, built as timm builds its SE: hidden width 1/16 of the channels rounded to a multiple of 8
# (SEModule's), no BatchNorm in the branch (trains at a batch of 1, as timm's SE does), tanh, and lambda at zero
# (TIMM_STYLE_SB: each block starts as the identity, as timm's zero-initialised residual branches expect). A timm
# model's own ratio wins. replace_attention builds the same block in place of an SE (docs/interop.md's table).
TIMM_SB = functools.partial(ShiftBalance, rd_ratio=1 / 16, rd_divisor=8, branch_norm="none", **TIMM_STYLE_SB)

# timm's SE-ResNets, with SB: (name, timm's ResNet arguments).
TIMM_RESNETS: dict[str, dict[str, Any]] = {
    "sbresnet18": dict(block="BasicBlock", layers=(2, 2, 2, 2)),
    "sbresnet34": dict(block="BasicBlock", layers=(3, 4, 6, 3)),
    "sbresnet50": dict(block="Bottleneck", layers=(3, 4, 6, 3)),
    "sbresnext26d_32x4d": dict(block="Bottleneck", layers=(2, 2, 2, 2), cardinality=32, base_width=4,
                               stem_width=32, stem_type="deep", avg_down=True),
}
# sbattn's CIFAR models: (name, sbattn's builder, attention).
CIFAR_MODELS: dict[str, tuple[str, Optional[str]]] = {
    f"{arch}_{suffix}": (arch, attention)
    for arch in ("vgg16", "resnet20", "resnet56") for suffix, attention in (("cifar", None), ("sb", "sb"), ("se", "se"))
}
CIFAR_MODELS.update({"resnet18_cifar": ("resnet18", None), "resnet18_cifar_sb": ("resnet18", "sb"),
                     "resnet18_cifar_se": ("resnet18", "se")})

_NO_WEIGHTS = "untrained: sbattn publishes no weights (train one with sbattn train, then checkpoint_path=)"
_registered = False


def _cifar_cfg(arch: str) -> dict[str, Any]:
    vgg = arch == "vgg16"
    return dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0,
                interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),  # sbattn's normalisation
                first_conv="features.0.0" if vgg else "stem.0", classifier="classifier.2" if vgg else "classifier",
                license="mit", notes=(_NO_WEIGHTS,))


def _feature_info(model: Any) -> list[dict[str, Any]]:
    """timm's feature_info of an sbattn model: each stage's output (VGG's after its pool; a ResNet's stem, then its
    stages), for features_only."""
    if hasattr(model, "features"):  # VGG: every stage ends in a 2x2 pool
        stages = [(f"features.{i}", stage) for i, stage in enumerate(model.features)]
        reductions = [2 ** (i + 1) for i in range(len(stages))]
    else:
        stages = [("stem", model.stem)] + [(f"stages.{i}", stage) for i, stage in enumerate(model.stages)]
        reductions, r = [], 1
        for _, stage in stages:  # the first convolution of a stage is its stride
            r *= next(m for m in stage.modules() if isinstance(m, nn.Conv2d)).stride[0]
            reductions.append(r)
    widths = [[m.num_features for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1] for _, stage in stages]
    return [dict(module=name, num_chs=c, reduction=r) for (name, _), c, r in zip(stages, widths, reductions)]


FEATURES = {"vgg16": 4, "resnet20": 4, "resnet56": 4, "resnet18": 5}  # len(_feature_info(model)) of each


# timm's create_model arguments that its train.py passes every model, with the values that ask ours for nothing
# (no dropout, drop path or drop block; the average pool they have; BatchNorm as built; scriptable as they are)
_TIMM_NOOPS = {"drop_rate": (0, None), "drop_path_rate": (0, None), "drop_block_rate": (0, None),
               "global_pool": ("avg", None), "bn_momentum": (None,), "bn_eps": (None,),
               "scriptable": (None, True, False)}


def _cifar_builder(arch: str, attention: Optional[str]) -> Callable[..., nn.Module]:
    def build(in_chans: int = 3, **kwargs: Any) -> Any:
        if in_chans != 3:
            raise ValueError(f"sbattn's CIFAR models take RGB images (in_chans=3), not in_chans={in_chans}")
        for name, nothing in _TIMM_NOOPS.items():
            value = kwargs.pop(name, None)
            if value not in nothing:
                raise ValueError(f"sbattn's CIFAR models take {name}={value!r} as nothing they can do: leave it at "
                                 f"{' or '.join(map(repr, nothing))}")
        model: Any = create_sbattn_model(arch, attention=attention, **kwargs)  # VGG or ResNet, given attributes
        model.feature_info = _feature_info(model)
        return model
    return build


def _entry(name: str, make: Callable[[bool, dict], nn.Module]) -> Callable[..., nn.Module]:
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name}: {_NO_WEIGHTS}; call with pretrained=False")
        return make(pretrained, kwargs)
    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"{name} (sbattn): {_NO_WEIGHTS}."
    return entry


def _make_resnet(name: str, args: dict[str, Any]) -> Callable[[bool, dict], nn.Module]:
    def make(pretrained: bool, kwargs: dict) -> nn.Module:
        from timm.models import build_model_with_cfg, resnet
        block_args = {"attn_layer": TIMM_SB, **kwargs.pop("block_args", {})}
        model_args = {**args, "block": getattr(resnet, args["block"]), "block_args": block_args, **kwargs}
        return build_model_with_cfg(resnet.ResNet, name, pretrained, **model_args)
    return make


def _make_cifar(name: str, arch: str, attention: Optional[str]) -> Callable[[bool, dict], nn.Module]:
    def make(pretrained: bool, kwargs: dict) -> nn.Module:
        from timm.models import build_model_with_cfg
        feature_cfg = dict(feature_cls="fx", out_indices=tuple(range(FEATURES[arch])))
        return build_model_with_cfg(_cifar_builder(arch, attention), name, pretrained, feature_cfg=feature_cfg,
                                    **kwargs)
    return make


SUITE_RATIO = 0.5  # --attn_ratio's default, which a timm network with SE of its own widths takes as "its own"


def create_timm_model(arch: str, attention: Optional[str] = None, activation: str = "tanh", ratio: float = SUITE_RATIO,
                      num_classes: int = 10, width: float = 1.0, placement: str = "block",
                      **block_options: Any) -> nn.Module:
    """timm's model `arch` ("timm:<name>"), untrained, with the attention of the suites, where the network has
    it: a network with SE has each SE module replaced (replace_attention, at the SE's own widths; "none" takes
    them out), one of timm's ResNet family takes the block as its blocks' attn_layer at `ratio` ("none": the plain
    ResNet)."""
    name = arch.removeprefix(TIMM_PREFIX)
    if width != 1.0:
        raise ValueError(f"timm's networks take no width multiplier (width={width:g}): use width 1")
    if placement != "block":
        raise ValueError(f"timm's networks keep their own places for attention (placement 'block'), not {placement!r}")
    timm = timm_module(arch, "timm", what="arch")
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r} (timm.list_models() names them)")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    has_se = [n for n, m in model.named_modules() if n and se_options(m) is not None]
    if attention in (None, "none"):
        for n in has_se:  # the baseline of a comparison has no attention, whatever timm's network had
            parent, _, leaf = n.rpartition(".")
            setattr(model.get_submodule(parent), leaf, nn.Identity())
        return model
    if has_se:  # each block at the width of the SE it replaces: the network's own, not sbattn's ratio
        if ratio != SUITE_RATIO:
            raise ValueError(f"--attn_ratio {ratio:g}: timm's {name} has SE of its own widths, which the blocks put in "
                             f"their places keep; leave --attn_ratio at {SUITE_RATIO:g}")
        replace_attention(model, attention, activation=activation, **block_options)
        return model
    options = dict(ratio=ratio, activation=activation, **block_options)
    layer = functools.partial(create_attention, attention, **options)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, block_args=dict(attn_layer=layer))
    except TypeError:
        raise ValueError(f"timm's {name} has no SE module to replace and takes no attention layer (block_args="
                         f"dict(attn_layer=...), as timm's ResNets do)") from None


register_prefix(TIMM_PREFIX, create_timm_model)


def register_with_timm() -> None:
    """Register the models and the "sb" string with timm (imported now); once, however often it is called."""
    global _registered, default_cfgs
    if _registered:
        return
    _registered = True
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models import generate_default_cfgs, register_model
    resnet_cfg = dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                      interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                      first_conv="conv1", classifier="fc", license="mit", notes=(_NO_WEIGHTS,))  # timm's ResNets'
    resnet_cfgs = {n: resnet_cfg for n in TIMM_RESNETS}
    default_cfgs = generate_default_cfgs({**resnet_cfgs, **{n: _cifar_cfg(a) for n, (a, _) in CIFAR_MODELS.items()}})
    module = sys.modules[__name__]
    for name, args in TIMM_RESNETS.items():
        setattr(module, name, register_model(_entry(name, _make_resnet(name, args))))
    for name, (arch, attention) in CIFAR_MODELS.items():
        setattr(module, name, register_model(_entry(name, _make_cifar(name, arch, attention))))
    _add_attention_string()


default_cfgs: Any = {}  # timm's register_model reads a module's pretrained configurations here


def _add_attention_string() -> None:
    """"sb" for timm's get_attn: its function wrapped, in timm.layers and in every timm module that imported it."""
    # By sys.modules: the attribute timm.layers.create_attn is the function of that name, not its module.
    original = getattr(importlib.import_module("timm.layers.create_attn"), "get_attn")
    if getattr(original, "sbattn_wraps", None) is not None:
        return

    @functools.wraps(original)
    def get_attn(attn_type: Any) -> Any:
        if isinstance(attn_type, str) and attn_type.lower() == "sb":
            return TIMM_SB
        return original(attn_type)
    setattr(get_attn, "sbattn_wraps", original)
    for name, module in list(sys.modules.items()):
        if (name == "timm" or name.startswith("timm.")) and getattr(module, "get_attn", None) is original:
            setattr(module, "get_attn", get_attn)


def _register_or_warn() -> None:
    """register_with_timm, its failure a warning: a timm whose registry is not as this module knows it must not
    stop `import timm` or `import sbattn`."""
    try:
        register_with_timm()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"sbattn could not register its models with timm ({type(e).__name__}: {e}); "
                      f"sbattn.ShiftBalance still works as an attn_layer class", stacklevel=2)


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Registers with timm as soon as `import timm` has run, when sbattn was imported first."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> Any:
        if fullname != "timm":
            return None
        # The other finders, in their order, find timm. This one stays until timm has run: a spec asked for and
        # not executed (importlib.util.find_spec("timm"), as libraries probe for timm) must not disarm it.
        others = (f for f in list(sys.meta_path) if f is not self)
        spec = next(filter(None, (getattr(f, "find_spec", lambda *a: None)(fullname, path, target) for f in others)),
                    None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run, finder = spec.loader.exec_module, self

        def exec_module(module: Any) -> None:
            run(module)
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            _register_or_warn()
        spec.loader.exec_module = exec_module
        return spec


def register_when_timm_is_imported() -> None:
    """Register with timm now if it is imported, else as soon as it is: `import sbattn` does not import timm."""
    if "timm" in sys.modules:
        _register_or_warn()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
