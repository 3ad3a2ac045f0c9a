"""The reference implementation's published figures beside sbattn's runs of its recipe, in one table.

Its README reports two tables of one run each, on the official CIFAR-10: SB & SE (baseline, SE, SB(Sigmoid)) and
the activation ablation (SB with five activations, Sigmoid in both): seven configurations, eight figures. A folder
that holds runs of its recipe (the `reference` preset) gets reference.md and reference.json: each configuration's
published figure beside sbattn's mean ± sd over n seeds, every row against the baseline and every SB row against
SE, with Welch's 95% interval, and the device and precision the runs were trained in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import Recipe, canonical_config
from ..errors import printable
from ..records import FinishedRun
from ..records.outputs import strict_json
from .stats import Difference, format_ci
from .tables import CONFIDENCE, Row, acc_cell, build_rows, recipe_text, sb_vs_se, write_text
from .variants import ABLATION_ACTIVATIONS, COMPARE, SHARED_FIELDS, Variant, attention_variant

__all__ = ["PUBLISHED", "reference_variants", "is_reference_recipe", "write_reference_table"]

# The reference implementation's README, percent: one run each, official CIFAR-10, VGG16, 80 epochs.
PUBLISHED = {"baseline": 92.27, "se": 92.63, "sb-sigmoid": 92.66, "sb-tanh": 92.22, "sb-relu": 92.24,
             "sb-softmax": 92.30, "sb-linear": 92.18}
# The recipe fields the table's rows share, less those of how a run was trained rather than what: the precision
# (auto is bf16 on a GPU, fp32 on many CPUs) and the random streams are shown, not required.
_REQUIRED = tuple(f for f in SHARED_FIELDS if f not in ("eval_every", "precision", "rng"))


def reference_variants() -> list[Variant]:
    """The seven configurations, in the reference's order: its first table, then the rest of its second."""
    return [attention_variant("none"), attention_variant("se")] + [
        attention_variant("sb", a) for a in ("sigmoid",) + tuple(a for a in ABLATION_ACTIVATIONS if a != "sigmoid")]


def is_reference_recipe(config: dict) -> bool:
    """Whether a run's saved configuration is the reference's recipe (the README's defaults), whatever its row."""
    saved, recipe = canonical_config(config), Recipe()
    return all(saved.get(name) == getattr(recipe, name) for name in _REQUIRED)


def write_reference_table(runs: Sequence[tuple[Variant, FinishedRun]], directory: Path) -> list[Path]:
    """reference.md and reference.json in `directory` from those of `runs` that are the reference's recipe and
    one of its configurations; nothing when there are none."""
    runs = [(v, r) for v, r in runs if v.key in PUBLISHED and is_reference_recipe(r.config)]
    if not runs:
        return []
    groups = {v: [r for w, r in runs if w.key == v.key] for v in reference_variants()}
    rows = {row.variant.key: row for row in build_rows(COMPARE, groups)}  # each against the baseline
    sb_se = {row.variant.key: d for row, d in sb_vs_se(list(rows.values()))}
    recipe = runs[0][1].config
    written = [directory / "reference.md", directory / "reference.json"]
    for path, text in zip(written, (_markdown(rows, sb_se, recipe), _json(rows, sb_se, recipe))):
        write_text(path, text)
    return written


def _trained_on(row: Row | None) -> list[str]:
    """'NVIDIA H200, bfloat16' for each device and precision the row's runs were trained in."""
    return sorted({f"{(r.summary.get('provenance') or {}).get('device_name') or r.summary.get('device')}, "
                   f"{r.summary.get('precision')}" for r in (row.runs if row else [])})


def _markdown(rows: dict[str, Row], sb_se: dict[str, Difference], recipe: dict) -> str:
    lines = ["### The reference implementation's table beside sbattn's", "",
             f"| Model | Reference impl. | sbattn | n | Δ vs baseline (pp) | {CONFIDENCE:.0%} CI of Δ | Trained on |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for variant in reference_variants():
        row = rows.get(variant.key)
        d = row.difference if row else None
        diff, ci = ("—", "—") if d is None else (f"{d.estimate:+.2f}", format_ci(d))
        lines.append(f"| {variant.label} | {PUBLISHED[variant.key]:.2f}% | {acc_cell(row) if row else '—'} | "
                     f"{row.n if row else 0} | {diff} | {ci} | {'; '.join(_trained_on(row)) or '—'} |")
    lines.append("")
    for key, d in sb_se.items():
        lines += [f"**{rows[key].variant.label} − SE**: {d.estimate:+.2f} pp, {CONFIDENCE:.0%} CI {format_ci(d)}"
                  f"{f' (Welch, {d.dof:.1f} dof)' if d.has_ci else ' (no interval: a row with one run)'}.", ""]
    data = sorted({str(r.summary.get("data")) for row in rows.values() for r in row.runs})
    seeds = sorted({s for row in rows.values() for s in row.seeds if s is not None})
    lines += [f"Recipe: {recipe_text(recipe)}; seeds {', '.join(map(str, seeds))}. Data: {'; '.join(data)}.", "",
              "Reference impl.: the figures its README reports, one run each on the official CIFAR-10 (its "
              "SB(Sigmoid) row is in both of its tables). sbattn: final test accuracy (the final weights evaluated "
              "in fp32), mean ± sample standard deviation over the n seeds; — where this folder holds no finished "
              "run of the row. Δ: difference of the mean from the baseline's, with the "
              f"{CONFIDENCE:.0%} confidence interval of Welch's t (n/a with one run in either row).", ""]
    return "\n".join(map(printable, lines))


def _json(rows: dict[str, Row], sb_se: dict[str, Difference], recipe: dict) -> str:
    def record(variant: Variant) -> dict:
        row, d = rows.get(variant.key), sb_se.get(variant.key)
        return {"key": variant.key, "label": variant.label, "published": PUBLISHED[variant.key],
                "n": row.n if row else 0, "seeds": row.seeds if row else [], "acc": row.accs if row else [],
                "acc_mean": row.mean if row else None, "acc_std": row.std if row else None,
                "vs_baseline": row.difference.to_dict() if row and row.difference else None,
                "vs_se": d.to_dict() if d else None, "trained_on": _trained_on(row),
                "runs": [r.name for r in row.runs] if row else []}
    return strict_json({"table": "reference", "confidence": CONFIDENCE, "acc_units": "percent",
                        "recipe": {k: recipe.get(k) for k in _REQUIRED},
                        "rows": [record(v) for v in reference_variants()]}, indent=1) + "\n"
