"""A suite's tables from its finished runs: rows with mean, spread and Welch intervals, as Markdown, CSV and
JSON, and the suite figure beside them. Everything here reads the runs' JSON files only (as `sbattn report`)."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import RECIPE_FIELDS
from ..config.recipe import RECIPE_DEFAULTS, TAGGED_FIELDS, canonical_config
from ..errors import UserError, printable
from ..files import atomic_write
from ..records import FinishedRun, RunPaths
from ..records.finished import read_run
from ..records.outputs import strict_json
from .figures import has_lambda, plot_lambda, plot_suite
from .stats import Difference, format_ci, mean, sample_std, welch
from .variants import SHARED_FIELDS, Suite, Variant

__all__ = ["CONFIDENCE", "Row", "load_finished_runs", "build_rows", "sb_vs_se", "render_markdown",
           "render_json", "render_csv", "write_suite_outputs", "write_lambda_figure"]

CONFIDENCE = 0.95


def load_finished_runs(directory: Path) -> list[FinishedRun]:
    """The finished runs in `directory`; a damaged one (read_run) is a UserError naming its file and field, and so
    is a run found twice (a copied JSON: the same recipe and seed), which would count as two seeds."""
    runs = (read_run(RunPaths(Path(directory), path.stem)) for path in sorted(Path(directory).glob("*.json")))
    found: dict[str, FinishedRun] = {}
    for run in runs:
        if run is None:
            continue
        key = json.dumps({k: run.config.get(k) for k in RECIPE_FIELDS}, sort_keys=True, default=str)
        if key in found:
            raise UserError(f"{printable(directory)} holds one run twice: {printable(found[key].name)}.json and "
                            f"{printable(run.name)}.json (the same recipe and seed); keep one, it would count as two "
                            f"seeds", code=2)
        found[key] = run
    return list(found.values())


@dataclass
class Row:
    variant: Variant
    runs: list[FinishedRun]
    difference: Difference | None = None  # from the suite's reference row; None on that row or without it
    accs: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.runs = sorted(self.runs, key=lambda r: (r.config.get("seed") is None, r.config.get("seed") or 0, r.name))
        self.accs = [r.final_acc for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float:
        return mean(self.accs)

    @property
    def std(self) -> float | None:
        return sample_std(self.accs)

    @property
    def params(self) -> int:
        return self.runs[0].summary["params"]

    @property
    def train_seconds(self) -> float:
        return mean([r.summary["train_seconds"] for r in self.runs])

    @property
    def seeds(self) -> list:
        return [r.config.get("seed") for r in self.runs]


def build_rows(suite: Suite, groups: dict[Variant, list[FinishedRun]]) -> list[Row]:
    """One row per configuration that has runs, in `groups`' order, each compared with the suite's baseline row."""
    rows = [Row(variant, runs) for variant, runs in groups.items() if runs]
    baseline = next((row for row in rows if row.variant.key == suite.baseline_row), None)
    for row in rows:
        if baseline is not None and row is not baseline:
            row.difference = welch(row.accs, baseline.accs, CONFIDENCE)
    return rows


def sb_vs_se(rows: Sequence[Row]) -> list[tuple[Row, Difference]]:
    se = next((row for row in rows if row.variant.key == "se"), None)
    return [] if se is None else [(row, welch(row.accs, se.accs, CONFIDENCE)) for row in rows if row.variant.use_sb]


def acc_cell(row: Row) -> str:
    return f"{row.mean:.2f}% ± n/a" if row.std is None else f"{row.mean:.2f} ± {row.std:.2f}%"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _verdict(a: str, b: str, d: Difference) -> str:
    if d.low is None or d.high is None:  # not d.has_ci
        return "No interval with one run per configuration: run with --seeds 2 or more"
    if d.low > 0:
        return f"The interval excludes 0: {a} is better than {b} at {CONFIDENCE:.0%} confidence"
    if d.high < 0:
        return f"The interval excludes 0: {a} is worse than {b} at {CONFIDENCE:.0%} confidence"
    return f"The interval contains 0: these runs cannot tell {a} from {b}"


def recipe_text(config: dict) -> str:
    config = canonical_config(config)
    if config["schedule"] == "multistep":
        milestones = ", ".join(map(str, config.get("milestones", [])))
        schedule = f"lr {config.get('init_lr'):g} ×{config.get('gamma'):g} at epochs {milestones}"
    else:
        schedule = (f"lr {config.get('init_lr'):g} ({config['optimizer']}, momentum {config['momentum']:g}) "
                    f"{config['schedule']} from ×{config['lr_start']:g} over {config['warmup']:.0%} of the steps "
                    f"to ×{config['lr_end']:g}")
    extras = [f"{name.replace('_', ' ')} {config[name]}" for name in TAGGED_FIELDS
              if name not in ("optimizer", "momentum", "schedule", "warmup", "lr_start", "lr_end")
              and config[name] != RECIPE_DEFAULTS[name]]
    return (f"{config.get('arch')}, attention placement `{config.get('placement')}`, width ×{config.get('width'):g}, "
            f"{config.get('epochs')} epochs, batch {config.get('batch_size')}, {schedule}, weight decay "
            f"{config.get('weight_decay'):g}, attention ratio {config.get('attn_ratio'):g}, dataset "
            f"{config.get('dataset')}, augmentation {config.get('augment')}, precision {config.get('precision')}"
            + "".join(f", {e}" for e in extras))


def render_markdown(suite: Suite, rows: Sequence[Row]) -> str:
    baseline = next((row.variant.label for row in rows if row.variant.key == suite.baseline_row), None)
    versus = baseline or suite.baseline_label
    best = max(rows, key=lambda row: row.mean)
    placement = rows[0].runs[0].config.get("placement")
    heading = suite.title + (f" (attention placement: {placement})" if placement != "stage" else "")
    lines = [f"### {heading}", "",
             f"| {suite.column} | Acc. | n | Δ vs {versus} (pp) | {CONFIDENCE:.0%} CI of Δ | Params | Train time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        acc = acc_cell(row)
        acc = f"**{acc}**" if row is best and len(rows) > 1 else acc
        if row.difference is None:
            diff, ci = ("—", "—") if row.variant.key == suite.baseline_row else ("n/a", "n/a")
        else:
            diff, ci = f"{row.difference.estimate:+.2f}", format_ci(row.difference)
        lines.append(f"| {row.variant.label} | {acc} | {row.n} | {diff} | {ci} | {row.params:,} | "
                     f"{_duration(row.train_seconds)} |")
    lines.append("")
    for row, d in (sb_vs_se(rows) if suite.name == "compare" else []):
        ci = format_ci(d)
        lines.append(f"**{row.variant.label} − SE**: {d.estimate:+.2f} pp, {CONFIDENCE:.0%} CI {ci}"
                     f"{f' (Welch, {d.dof:.1f} dof)' if d.has_ci else ''}. {_verdict(row.variant.label, 'SE', d)}.")
        lines.append("")
    seeds = sorted({s for row in rows for s in row.seeds if s is not None})
    lines += [f"Recipe: {recipe_text(rows[0].runs[0].config)}; seeds {', '.join(map(str, seeds))}.", "",
              f"Acc.: final test accuracy (the final weights, evaluated in fp32), mean ± sample standard deviation "
              f"over the n seeds. "
              f"Δ: difference of the mean from {versus} ({suite.baseline_why}), in percentage points, with the "
              f"{CONFIDENCE:.0%} confidence interval of Welch's t (n/a when a configuration has one run). "
              f"Train time: mean training time per run, evaluation excluded. Bold: the highest mean.", ""]
    return "\n".join(map(printable, lines))  # the labels and the recipe come from files: no terminal escapes


def _row_record(row: Row) -> dict:
    return {"key": row.variant.key, "label": row.variant.label, "attention": row.variant.attention,
            "use_sb": row.variant.use_sb, "use_se": row.variant.use_se,
            "activation": row.variant.activation if row.variant.use_sb else None,
            "n": row.n, "seeds": row.seeds, "acc": row.accs, "acc_mean": row.mean, "acc_std": row.std,
            "difference": row.difference.to_dict() if row.difference else None, "params": row.params,
            "train_seconds_mean": row.train_seconds, "runs": [r.name for r in row.runs]}


def render_json(suite: Suite, rows: Sequence[Row]) -> str:
    # "reference": the baseline row's key, the JSON's name for it since 0.1
    data = {"suite": suite.name, "title": suite.title, "reference": suite.baseline_row, "confidence": CONFIDENCE,
            "acc_units": "percent", "recipe": {k: rows[0].runs[0].config.get(k) for k in SHARED_FIELDS},
            "rows": [_row_record(row) for row in rows]}
    if suite.name == "compare":
        data["sb_vs_se"] = [{"label": row.variant.label, **d.to_dict()} for row, d in sb_vs_se(rows)]
    return strict_json(data, indent=1) + "\n"


def render_csv(suite: Suite, rows: Sequence[Row]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([suite.column.lower(), "key", "n", "seeds", "acc_mean", "acc_std", f"diff_vs_{suite.baseline_row}",
                     "ci_low", "ci_high", "dof", "params", "train_seconds_mean"])
    for row in rows:
        d = row.difference
        estimate, low, high, dof = (d.estimate, d.low, d.high, d.dof) if d is not None else (None,) * 4
        writer.writerow([printable(row.variant.label), printable(row.variant.key), row.n, " ".join(map(str, row.seeds)),
                         _num(row.mean), _num(row.std), _num(estimate), _num(low), _num(high),
                         _num(dof, 2), row.params, _num(row.train_seconds, 1)])
    return text.getvalue()


def _num(value: float | None, digits: int = 4) -> str:
    """A CSV number, rounded (the accuracies are percent; more digits would be noise); empty for none."""
    return "" if value is None else repr(round(value, digits))


def write_text(path: Path, text: str) -> None:
    """`text` into `path`, whole or not at all."""
    atomic_write(path, lambda f: f.write(text.encode()))


def write_suite_outputs(suite: Suite, groups: dict[Variant, list[FinishedRun]], directory: Path) -> list[Path]:
    """<suite>.md/.csv/.json and <suite>.png in `directory`; returns the paths written."""
    rows = build_rows(suite, groups)
    if not rows:
        raise UserError(f"no finished runs for the {suite.name} table in {directory}")
    # The set is published together: everything rendered first, the figure (the slow part) written, then the
    # texts in quick succession, so that an interruption leaves the earlier set whole rather than a mix.
    texts = {directory / f"{suite.name}{suffix}": render(suite, rows)
             for suffix, render in ((".md", render_markdown), (".csv", render_csv), (".json", render_json))}
    config = rows[0].runs[0].config
    title = (f"{suite.title}: {config.get('arch')}, {config.get('placement')} placement, "
             f"width ×{config.get('width'):g}, {config.get('epochs')} epochs, {config.get('dataset')}")
    labels = [printable(row.variant.label) for row in rows]
    plot_suite({label: [r.history for r in row.runs] for label, row in zip(labels, rows)},
               directory / f"{suite.name}.png", printable(title),
               finals={label: row.accs for label, row in zip(labels, rows)})
    for path, text in texts.items():
        write_text(path, text)
    return [*texts, directory / f"{suite.name}.png"]


def write_lambda_figure(groups: dict[Variant, list[FinishedRun]], directory: Path) -> list[Path]:
    """lambda.png from the SB configurations among `groups`; nothing when none has lambda statistics."""
    runs = {printable(v.label): [r.history for r in rs] for v, rs in groups.items() if v.use_sb and rs}
    runs = {label: histories for label, histories in runs.items() if has_lambda(histories)}
    if not runs:
        return []
    config = next(rs for v, rs in groups.items() if v.use_sb and rs)[0].config
    plot_lambda(runs, directory / "lambda.png", printable(
        f"SB control factor |lambda| per block ({config.get('placement')} placement, mean over seeds)"))
    return [directory / "lambda.png"]
