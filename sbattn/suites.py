"""Experiment suites: the seed's two tables (SB & SE, the activation ablation) from one command each, over seeds.

Every run of a suite lives in the suite's output directory under its own run name. A finished run (its JSON
summary complete) is reused, an unfinished one resumes from its checkpoint, so re-running the same command
after a crash or Ctrl-C trains only what is missing. The tables and figures are built from the runs' JSON files
alone, which is also what `sbattn report` does.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .checkpoint import RECIPE_FIELDS, atomic_write
from .cli import UserError, add_config_options
from .config import TrainConfig
from .jobs import Job, run_jobs
from .stats import Difference, format_ci, mean, sample_std, welch

__all__ = ["PRESETS", "ABLATION_ACTIVATIONS", "Variant", "Run", "Row", "add_compare_options", "run_compare",
           "add_ablate_options", "run_ablate", "add_report_options", "run_report", "suite_config",
           "compare_variants", "ablation_variants", "read_run", "load_finished_runs", "build_rows",
           "render_markdown", "write_suite_outputs", "train"]

# What each preset sets; a flag given on the command line wins over its preset. quick's two jobs: at this width a
# 2-core CPU trains about 1.3x more images per second as two one-thread processes than as one two-thread process.
PRESETS: dict[str, dict[str, Any]] = {
    "seed": {"epochs": 80, "batch_size": 64, "milestones": [40, 60, 80], "width": 1.0},
    "quick": {"width": 0.25, "epochs": 18, "milestones": [9, 14], "batch_size": 64, "jobs": 2},
}

ABLATION_ACTIVATIONS = ("tanh", "sigmoid", "relu", "softmax", "linear")  # the seed's table order
ACTIVATION_LABELS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "ReLU", "softmax": "Softmax", "linear": "Linear"}
CONFIDENCE = 0.95
CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Baseline and SE ignore the activation; pinning it keeps their run names (the seed's) the same whatever --activation.
NEUTRAL_ACTIVATION = CONFIG_FIELDS["activation"].default
# The settings every run of one table shares; the rest tell the table's rows and seeds apart.
SHARED_FIELDS = tuple(f for f in RECIPE_FIELDS if f not in ("use_sb", "use_se", "activation", "seed"))


def train(config: TrainConfig, quiet: bool = False):
    """sbattn.train.train, imported when first needed (report never needs the training stack)."""
    from .train import train as train_run
    return train_run(config, quiet=quiet)


# ---------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Variant:
    """One row of a table: a model configuration, trained once per seed."""

    key: str  # "baseline", "se", "sb-<activation>"
    label: str  # as the seed's tables print it
    use_sb: bool
    use_se: bool
    activation: str


def sb_variant(activation: str, label: str | None = None) -> Variant:
    name = ACTIVATION_LABELS.get(activation, activation)
    return Variant(f"sb-{activation}", label or f"SB({name})", True, False, activation)


BASELINE = Variant("baseline", "baseline", False, False, NEUTRAL_ACTIVATION)
SE = Variant("se", "SE", False, True, NEUTRAL_ACTIVATION)


def compare_variants(activation: str) -> list[Variant]:
    return [BASELINE, SE, sb_variant(activation)]


def ablation_variants() -> list[Variant]:
    return [sb_variant(a, ACTIVATION_LABELS[a]) for a in ABLATION_ACTIVATIONS]


def variant_of(config: dict) -> Variant:
    """The table row a run's configuration belongs to."""
    if config.get("use_sb"):
        return sb_variant(config["activation"])
    return SE if config.get("use_se") else BASELINE


@dataclass(frozen=True)
class Suite:
    name: str  # file stem of the table and figure
    title: str  # the seed's table heading
    column: str  # the seed's first column
    reference: str  # variant key every row is compared with
    reference_why: str

    def default_output_dir(self, preset: str | None, placement: str) -> str:
        """./results/<suite>[-<preset>][-layer]: recipes a user is likely to run side by side never share a table."""
        parts = [self.name] + ([preset] if preset else []) + (["layer"] if placement == "layer" else [])
        return "./results/" + "-".join(parts)


COMPARE = Suite("compare", "SB & SE", "Model", "baseline", "the model without attention")
ABLATION = Suite("ablation", "Ablation Study for Activations", "Activation", "sb-tanh",
                 "tanh, the paper's activation and the seed's default, not the best row")


# ---------------------------------------------------------------- options

def _add_suite_options(parser: argparse.ArgumentParser, suite: Suite, skip: tuple[str, ...],
                       help_defaults: dict[str, str]) -> None:
    add_config_options(parser, skip=skip)
    for action in parser._actions:
        if action.dest in CONFIG_FIELDS:
            # Absent from the namespace unless given, so a preset can tell which settings the user chose.
            action.default = argparse.SUPPRESS
            if action.dest in help_defaults:
                action.help = action.help.rsplit(" (default:", 1)[0] + f" (default: {help_defaults[action.dest]})"
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="runs per configuration, seeds 0..N-1 (or SEED..SEED+N-1 with --seed) (default: 1)")
    preset_help = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                            for name, values in PRESETS.items())
    parser.add_argument("--jobs", type=int, default=None, metavar="K",
                        help="train K runs at once, each in its own process (on a CPU the cores are shared out; "
                             "on a GPU small models leave room for several) (default: the preset's, else 1)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None,
                        help=f"a recipe; flags given explicitly win over it ({preset_help})")
    parser.set_defaults(suite=suite.name)


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    _add_suite_options(parser, COMPARE, skip=("use_sb", "use_se", "resume"),
                       help_defaults={"activation": "sigmoid (the seed's table)",
                                 "output_dir": "./results/compare[-PRESET][-layer]"})


def add_ablate_options(parser: argparse.ArgumentParser) -> None:
    _add_suite_options(parser, ABLATION, skip=("use_sb", "use_se", "activation", "resume"),
                       help_defaults={"output_dir": "./results/ablation[-PRESET][-layer]"})


def add_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a suite's output directory (compare's or ablate's --output-dir)")


def _explicit(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in CONFIG_FIELDS}


def suite_config(args: argparse.Namespace, suite: Suite) -> TrainConfig:
    """The shared configuration: TrainConfig defaults, then the suite's, then the preset, then explicit flags."""
    explicit = _explicit(args)
    preset = getattr(args, "preset", None)
    values: dict[str, Any] = {"activation": "sigmoid"} if suite is COMPARE else {}
    values.update({k: v for k, v in (PRESETS[preset] if preset else {}).items() if k in CONFIG_FIELDS})
    values.update(explicit)
    if "output_dir" not in values:
        placement = values.get("placement", CONFIG_FIELDS["placement"].default)
        values["output_dir"] = suite.default_output_dir(preset, placement)
    return TrainConfig(**{**values, "resume": True})


def job_count(args: argparse.Namespace) -> int:
    """--jobs when given, else the preset's, else 1."""
    if getattr(args, "jobs", None) is not None:
        return args.jobs
    return PRESETS.get(getattr(args, "preset", None) or "", {}).get("jobs", 1)


def seed_list(args: argparse.Namespace) -> list[int]:
    count = getattr(args, "seeds", 1)
    if count < 1:
        raise UserError(f"--seeds {count}: need at least one run per configuration", code=2)
    start = _explicit(args).get("seed")
    return [(start or 0) + i for i in range(count)]


def run_config(base: TrainConfig, variant: Variant, seed: int) -> TrainConfig:
    return TrainConfig.from_dict(base.to_dict(), use_sb=variant.use_sb, use_se=variant.use_se,
                                 activation=variant.activation, seed=seed, resume=True)


# ---------------------------------------------------------------- runs on disk

@dataclass
class Run:
    """A finished run, as its JSON file holds it."""

    name: str
    config: dict
    summary: dict
    history: list[dict]

    @property
    def final_acc(self) -> float:
        """Final test accuracy in percent."""
        return 100.0 * self.summary["final_eval_acc"]


def read_run(path: Path) -> Run | None:
    """The run in `path`, or None when it is not a finished run's JSON (a table, an unfinished run, ...)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    summary = data.get("summary") if isinstance(data, dict) else None
    if not (isinstance(summary, dict) and summary.get("complete") is True and isinstance(summary.get("config"), dict)
            and isinstance(data.get("history"), list) and summary.get("final_eval_acc") is not None):
        return None
    return Run(summary.get("run", Path(path).stem), summary["config"], summary, data["history"])


def load_finished_runs(directory: Path) -> list[Run]:
    runs = (read_run(path) for path in sorted(Path(directory).glob("*.json")))
    return [run for run in runs if run is not None]


def finished_run(config: TrainConfig) -> Run | None:
    """The finished run of `config` in its output directory; a finished run of another recipe is an error."""
    path = Path(config.output_dir) / f"{config.run_name}.json"
    run = read_run(path)
    if run is None:
        return None
    differences = [f"{name} {run.config.get(name)!r} there, {getattr(config, name)!r} now"
                   for name in RECIPE_FIELDS if run.config.get(name) != getattr(config, name)]
    if differences:
        raise UserError(f"{path} is a finished run of another recipe ({'; '.join(differences)}): use another "
                        f"--output-dir for this one", code=2)
    return run


def _check_one_recipe(runs: Sequence[Run], directory: Path) -> None:
    differing = [name for name in SHARED_FIELDS if len({json.dumps(r.config.get(name)) for r in runs}) > 1]
    if differing:
        values = "; ".join(f"{name}: {', '.join(sorted({str(r.config.get(name)) for r in runs}))}"
                           for name in differing)
        raise UserError(f"{directory} holds runs of different recipes ({values}), which one table cannot "
                        f"compare: give each recipe its own --output-dir")


# ---------------------------------------------------------------- tables

@dataclass
class Row:
    variant: Variant
    runs: list[Run]
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


def build_rows(suite: Suite, groups: dict[Variant, list[Run]]) -> list[Row]:
    """One row per configuration that has runs, in `groups`' order, each compared with the reference row."""
    rows = [Row(variant, runs) for variant, runs in groups.items() if runs]
    reference = next((row for row in rows if row.variant.key == suite.reference), None)
    for row in rows:
        if reference is not None and row is not reference:
            row.difference = welch(row.accs, reference.accs, CONFIDENCE)
    return rows


def sb_vs_se(rows: Sequence[Row]) -> list[tuple[Row, Difference]]:
    se = next((row for row in rows if row.variant.key == "se"), None)
    return [] if se is None else [(row, welch(row.accs, se.accs, CONFIDENCE)) for row in rows if row.variant.use_sb]


def _acc_cell(row: Row) -> str:
    return f"{row.mean:.2f}% ± n/a" if row.std is None else f"{row.mean:.2f} ± {row.std:.2f}%"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _verdict(a: str, b: str, d: Difference) -> str:
    if not d.has_ci:
        return "No interval with one run per configuration: run with --seeds 2 or more"
    if d.low > 0:
        return f"The interval excludes 0: {a} is better than {b} at {CONFIDENCE:.0%} confidence"
    if d.high < 0:
        return f"The interval excludes 0: {a} is worse than {b} at {CONFIDENCE:.0%} confidence"
    return f"The interval contains 0: these runs cannot tell {a} from {b}"


def recipe_text(config: dict) -> str:
    milestones = ", ".join(map(str, config.get("milestones", [])))
    return (f"{config.get('arch')}, attention placement `{config.get('placement')}`, width ×{config.get('width'):g}, "
            f"{config.get('epochs')} epochs, batch {config.get('batch_size')}, lr {config.get('init_lr'):g} "
            f"×{config.get('gamma'):g} at epochs {milestones}, weight decay {config.get('weight_decay'):g}, "
            f"attention ratio {config.get('attn_ratio'):g}, dataset {config.get('dataset')}, "
            f"augmentation {config.get('augment')}, precision {config.get('precision')}")


def render_markdown(suite: Suite, rows: Sequence[Row]) -> str:
    reference = next((row.variant.label for row in rows if row.variant.key == suite.reference), None)
    ref_name = reference or dict(compare="baseline", ablation="Tanh")[suite.name]
    best = max(rows, key=lambda row: row.mean)
    placement = rows[0].runs[0].config.get("placement")
    heading = suite.title + (f" (attention placement: {placement})" if placement != "stage" else "")
    lines = [f"### {heading}", "",
             f"| {suite.column} | Acc. | n | Δ vs {ref_name} (pp) | {CONFIDENCE:.0%} CI of Δ | Params | Train time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        acc = _acc_cell(row)
        acc = f"**{acc}**" if row is best and len(rows) > 1 else acc
        if row.difference is None:
            diff, ci = ("—", "—") if row.variant.key == suite.reference else ("n/a", "n/a")
        else:
            diff, ci = f"{row.difference.estimate:+.2f}", format_ci(row.difference)
        lines.append(f"| {row.variant.label} | {acc} | {row.n} | {diff} | {ci} | {row.params:,} | "
                     f"{_duration(row.train_seconds)} |")
    lines.append("")
    for row, d in (sb_vs_se(rows) if suite is COMPARE else []):
        ci = format_ci(d)
        lines.append(f"**{row.variant.label} − SE**: {d.estimate:+.2f} pp, {CONFIDENCE:.0%} CI {ci}"
                     f"{f' (Welch, {d.dof:.1f} dof)' if d.has_ci else ''}. {_verdict(row.variant.label, 'SE', d)}.")
        lines.append("")
    seeds = sorted({s for row in rows for s in row.seeds if s is not None})
    lines += [f"Recipe: {recipe_text(rows[0].runs[0].config)}; seeds {', '.join(map(str, seeds))}.", "",
              f"Acc.: final test accuracy (after the last epoch), mean ± sample standard deviation over the n seeds. "
              f"Δ: difference of the mean from {ref_name} ({suite.reference_why}), in percentage points, with the "
              f"{CONFIDENCE:.0%} confidence interval of Welch's t (n/a when a configuration has one run). "
              f"Train time: mean training time per run, evaluation excluded. Bold: the highest mean.", ""]
    return "\n".join(lines)


def _row_record(row: Row) -> dict:
    return {"key": row.variant.key, "label": row.variant.label, "use_sb": row.variant.use_sb,
            "use_se": row.variant.use_se, "activation": row.variant.activation if row.variant.use_sb else None,
            "n": row.n, "seeds": row.seeds, "acc": row.accs, "acc_mean": row.mean, "acc_std": row.std,
            "difference": row.difference.to_dict() if row.difference else None, "params": row.params,
            "train_seconds_mean": row.train_seconds, "runs": [r.name for r in row.runs]}


def render_json(suite: Suite, rows: Sequence[Row]) -> str:
    data = {"suite": suite.name, "title": suite.title, "reference": suite.reference, "confidence": CONFIDENCE,
            "acc_units": "percent", "recipe": {k: rows[0].runs[0].config.get(k) for k in SHARED_FIELDS},
            "rows": [_row_record(row) for row in rows]}
    if suite is COMPARE:
        data["sb_vs_se"] = [{"label": row.variant.label, **d.to_dict()} for row, d in sb_vs_se(rows)]
    return json.dumps(data, indent=1) + "\n"


def render_csv(suite: Suite, rows: Sequence[Row]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([suite.column.lower(), "key", "n", "seeds", "acc_mean", "acc_std", f"diff_vs_{suite.reference}",
                     "ci_low", "ci_high", "dof", "params", "train_seconds_mean"])
    for row in rows:
        d = row.difference
        writer.writerow([row.variant.label, row.variant.key, row.n, " ".join(map(str, row.seeds)), _num(row.mean),
                         _num(row.std), _num(d and d.estimate), _num(d and d.low), _num(d and d.high),
                         _num(d and d.dof, 2), row.params, _num(row.train_seconds, 1)])
    return text.getvalue()


def _num(value: float | None, digits: int = 4) -> str:
    """A CSV number, rounded (the accuracies are percent; more digits would be noise); empty for none."""
    return "" if value is None else repr(round(value, digits))


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_suite_outputs(suite: Suite, groups: dict[Variant, list[Run]], directory: Path) -> list[Path]:
    """<suite>.md/.csv/.json and <suite>.png in `directory`; returns the paths written."""
    from .suite_figures import plot_suite
    rows = build_rows(suite, groups)
    if not rows:
        raise UserError(f"no finished runs for the {suite.name} table in {directory}")
    written = []
    for suffix, render in ((".md", render_markdown), (".csv", render_csv), (".json", render_json)):
        path = directory / f"{suite.name}{suffix}"
        _write_text(path, render(suite, rows))
        written.append(path)
    config = rows[0].runs[0].config
    title = (f"{suite.title}: {config.get('arch')}, {config.get('placement')} placement, "
             f"width ×{config.get('width'):g}, {config.get('epochs')} epochs, {config.get('dataset')}")
    plot_suite({row.variant.label: [r.history for r in row.runs] for row in rows}, directory / f"{suite.name}.png",
               title)
    written.append(directory / f"{suite.name}.png")
    return written


def write_lambda_figure(groups: dict[Variant, list[Run]], directory: Path) -> list[Path]:
    """lambda.png from the SB configurations among `groups`; nothing when none has lambda statistics."""
    from .suite_figures import has_lambda, plot_lambda
    runs = {v.label: [r.history for r in rs] for v, rs in groups.items() if v.use_sb and rs}
    runs = {label: histories for label, histories in runs.items() if has_lambda(histories)}
    if not runs:
        return []
    config = next(rs for v, rs in groups.items() if v.use_sb and rs)[0].config
    plot_lambda(runs, directory / "lambda.png",
                f"SB control factor |lambda| per block ({config.get('placement')} placement, mean over seeds)")
    return [directory / "lambda.png"]


# ---------------------------------------------------------------- commands

def _group(variants: Iterable[Variant], runs: Iterable[tuple[Variant, Run]]) -> dict[Variant, list[Run]]:
    groups: dict[Variant, list[Run]] = {v: [] for v in variants}
    for variant, run in runs:
        groups.setdefault(variant, []).append(run)
    return groups


def _log(message: str) -> None:
    print(message, flush=True)


def run_suite(args: argparse.Namespace, suite: Suite, variants_for: Callable[[TrainConfig], list[Variant]]) -> int:
    """Train (or reuse, or resume) every variant for every seed, then write the tables and figures."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("a suite starts its trainings itself and does not run under torchrun: start it without "
                        "torchrun, or each of its runs with torchrun -m sbattn train", code=2)
    jobs = job_count(args)
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: need at least 1", code=2)
    base = suite_config(args, suite)
    seeds = seed_list(args)
    variants = variants_for(base)
    plan = [(v, run_config(base, v, seed)) for seed in seeds for v in variants]  # one of each first, then seed 2
    directory = Path(base.output_dir)
    missing: list[tuple[str, TrainConfig]] = []
    for i, (variant, config) in enumerate(plan, 1):
        tag = f"{suite.name} [{i}/{len(plan)}] {variant.label}, seed {config.seed}"
        if finished_run(config) is not None:
            _log(f"{tag}: finished earlier, reused {config.run_name}.json")
        else:
            missing.append((tag, config))
    code = _train_missing(missing, jobs)
    if code == 130:
        _log(f"{suite.name}: interrupted; run the same command again to finish the missing runs")
    if code != 0:
        return code
    done: list[tuple[Variant, Run]] = []
    for variant, config in plan:
        run = finished_run(config)
        if run is None:
            raise UserError(f"{config.run_name} ended without a complete summary in {directory}")
        done.append((variant, run))
    groups = _group(variants, done)
    written = write_suite_outputs(suite, groups, directory) + write_lambda_figure(groups, directory)
    _log(f"\n{(directory / f'{suite.name}.md').read_text()}")
    _log(f"{suite.name}: wrote {', '.join(str(p) for p in written)}")
    return 0


def _train_missing(missing: list[tuple[str, TrainConfig]], jobs: int) -> int:
    """Train each (tag, config): in this process one after another, or `jobs` processes at a time."""
    if jobs > 1:
        if any(config.download for _, config in missing):  # once here, not once per process into one file
            from .data import load_cifar10
            c = missing[0][1]
            load_cifar10(c.data_dir, c.dataset, True, c.cache_dir, c.resize)
            missing = [(tag, dataclasses.replace(config, download=False)) for tag, config in missing]
        return run_jobs([Job(tag, config) for tag, config in missing], jobs, _log)
    for tag, config in missing:
        _log(f"{tag}: {'resuming' if Job(tag, config).checkpoint.exists() else 'training'} {config.run_name}")
        code = train(config).exit_code
        if code != 0:
            return code
    return 0


def run_compare(args: argparse.Namespace) -> int:
    return run_suite(args, COMPARE, lambda base: compare_variants(base.activation))


def run_ablate(args: argparse.Namespace) -> int:
    return run_suite(args, ABLATION, lambda base: ablation_variants())


def _order(variant: Variant) -> tuple:
    if not variant.use_sb:
        return (0 if variant.key == "baseline" else 1, 0)
    act = variant.activation
    return (2, ABLATION_ACTIVATIONS.index(act) if act in ABLATION_ACTIVATIONS else len(ABLATION_ACTIVATIONS), act)


def run_report(args: argparse.Namespace) -> int:
    """Rebuild compare.* (baseline or SE runs present) and ablation.* (SB runs of 2+ activations) from the files."""
    directory = Path(args.directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory", code=2)
    runs = load_finished_runs(directory)
    unfinished = sorted(p.stem for p in directory.glob("*.ckpt"))
    if unfinished:
        print(f"report: skipping {len(unfinished)} unfinished run(s) ({', '.join(unfinished)}); re-run their "
              f"suite to finish them", file=sys.stderr)
    if not runs:
        raise UserError(f"{directory} holds no finished runs (<run>.json with a complete summary)")
    _check_one_recipe(runs, directory)
    grouped = _group([], ((variant_of(r.config), r) for r in runs))
    variants = sorted(grouped, key=_order)
    by_variant = {v: grouped[v] for v in variants}
    sb = [v for v in variants if v.use_sb]
    written: list[Path] = []
    if any(not v.use_sb for v in variants):
        written += write_suite_outputs(COMPARE, {v: by_variant[v] for v in variants}, directory)
    if len(sb) >= 2:
        labelled = {dataclasses.replace(v, label=ACTIVATION_LABELS.get(v.activation, v.activation)): by_variant[v]
                    for v in sb}
        written += write_suite_outputs(ABLATION, labelled, directory)
    if not written:
        raise UserError(f"{directory} holds only {sb[0].label} runs: nothing to compare (a compare suite needs "
                        f"baseline or SE runs, an ablation SB runs of two or more activations)")
    written += write_lambda_figure(by_variant, directory)
    for path in written:
        if path.suffix == ".md":
            print(path.read_text())
    print(f"report: wrote {', '.join(str(p) for p in written)}")
    return 0
