"""What a suite trains: its rows (variants: an attention kind and SB's activation), its presets, and the two
suites of the reference implementation's README (SB & SE; the activation ablation)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import RECIPE_FIELDS, TrainConfig
from ..config.presets import PRESET_ALIASES, PRESETS

__all__ = ["PRESETS", "PRESET_ALIASES", "ABLATION_ACTIVATIONS", "Variant", "Suite", "COMPARE", "ABLATION",
           "SHARED_FIELDS", "attention_variant", "compare_variants", "ablation_variants", "variant_of",
           "variant_order"]

ABLATION_ACTIVATIONS = ("tanh", "sigmoid", "relu", "softmax", "linear")  # the reference's table order
ACTIVATION_LABELS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "ReLU", "softmax": "Softmax", "linear": "Linear"}
# Kinds not named here print upper-cased (ECA, CBAM); global context says which of its two forms it is.
ATTENTION_LABELS = {"none": "baseline", "se": "SE", "gc": "GC(scale)", "gca": "GC(add)", "timm:se": "SE(timm)"}
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
# Rows other than SB ignore the activation; pinning it keeps their run names (the reference's) the same whatever
# --activation.
NEUTRAL_ACTIVATION: str = _DEFAULTS["activation"]
# The settings every run of one table shares; the rest tell the table's rows and seeds apart.
SHARED_FIELDS = tuple(f for f in RECIPE_FIELDS if f not in ("attention", "use_sb", "use_se", "activation", "seed"))


@dataclass(frozen=True)
class Variant:
    """One row of a table: a model configuration, trained once per seed."""

    key: str  # "baseline", "se", "sb-<activation>", or another attention kind's name
    label: str  # as the reference's tables print it
    attention: str  # a registered kind, or "none"
    activation: str

    @property
    def use_sb(self) -> bool:
        return self.attention == "sb"

    @property
    def use_se(self) -> bool:
        return self.attention == "se"


def attention_variant(kind: str, activation: str = NEUTRAL_ACTIVATION, label: str | None = None) -> Variant:
    """The row for attention `kind` ("none", "sb", "se", or any registered kind)."""
    if kind == "sb":
        name = ACTIVATION_LABELS.get(activation, activation)
        return Variant(f"sb-{activation}", label or f"SB({name})", "sb", activation)
    key = "baseline" if kind == "none" else kind
    return Variant(key, label or ATTENTION_LABELS.get(kind, kind.upper()), kind, NEUTRAL_ACTIVATION)


def compare_variants(kinds: tuple[str, ...], activation: str) -> list[Variant]:
    """The rows of a compare suite: one per attention kind, SB's with `activation`."""
    return [attention_variant(kind, activation) for kind in kinds]


def ablation_variants() -> list[Variant]:
    """The rows of the ablation suite: SB with each of the reference's activations."""
    return [attention_variant("sb", a, ACTIVATION_LABELS[a]) for a in ABLATION_ACTIVATIONS]


def variant_of(config: dict) -> Variant:
    """The table row a run's (canonical) configuration belongs to."""
    return attention_variant(config["attention"], config.get("activation", NEUTRAL_ACTIVATION))


def variant_order(variant: Variant) -> tuple:
    """Baseline, SE, SB by the reference's activation order, then other kinds by name."""
    if variant.use_sb:
        act = variant.activation
        return (2, ABLATION_ACTIVATIONS.index(act) if act in ABLATION_ACTIVATIONS else len(ABLATION_ACTIVATIONS),
                act)
    return ({"none": 0, "se": 1}.get(variant.attention, 3), 0, variant.attention)


@dataclass(frozen=True)
class Suite:
    name: str  # file stem of the table and figure
    title: str  # the reference's table heading
    column: str  # the reference's first column
    baseline_row: str  # the key of the row every other row is compared with
    baseline_label: str  # its label when it has no runs
    baseline_why: str  # why that row

    def default_output_dir(self, preset: str | None, placement: str) -> str:
        """./results/<suite>[-<preset>][-layer]: recipes a user is likely to run side by side never share a table."""
        parts = [self.name] + ([preset] if preset else []) + (["layer"] if placement == "layer" else [])
        return "./results/" + "-".join(parts)


COMPARE = Suite("compare", "SB & SE", "Model", "baseline", "baseline", "the model without attention")
ABLATION = Suite("ablation", "Ablation Study for Activations", "Activation", "sb-tanh", "Tanh",
                 "tanh, the paper's activation and the reference implementation's default, not the best row")
