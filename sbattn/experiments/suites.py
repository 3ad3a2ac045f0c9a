"""Experiment suites: the reference implementation's two tables (SB & SE, the activation ablation), and any set
of attention kinds, from one command each, over seeds.

Every run of a suite lives in the suite's output directory under its own run name. A finished run (its JSON
summary complete) is reused, an unfinished one resumes from its checkpoint, so re-running the same command
after a crash or Ctrl-C trains only what is missing. The tables and figures are built from the runs' JSON files
alone, which is also what `sbattn report` does.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..config import TrainConfig
from ..data import load_cifar10
from ..config.presets import preset_jobs, preset_options
from ..errors import UserError, printable
from ..records import FinishedRun, RunPaths, finished_run as finished_record
from ..records.outputs import file_failure
from ..system import available_cores
from ..train import train
from .jobs import Job, run_jobs, run_together
from .reference_table import is_reference_recipe, write_reference_table
from .tables import load_finished_runs, write_lambda_figure, write_suite_outputs
from .variants import (ABLATION, ACTIVATION_LABELS, COMPARE, SHARED_FIELDS, Suite, Variant, variant_of,
                       variant_order)

__all__ = ["SuiteRequest", "suite_config", "job_count", "run_config", "finished_run", "run_suite", "report"]

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TABLES_AGAIN = "the runs are kept: make room or fix the path, then `sbattn report {directory}` writes the tables"


def suite_config(suite: Suite, preset: str | None, explicit: dict[str, Any]) -> TrainConfig:
    """The shared configuration: TrainConfig defaults, then the suite's, then the preset, then explicit flags."""
    values: dict[str, Any] = {"activation": "sigmoid"} if suite is COMPARE else {}
    values.update(preset_options(preset))
    values.update(explicit)
    if "output_dir" not in values:
        placement = values.get("placement", _FIELDS["placement"].default)
        values["output_dir"] = suite.default_output_dir(preset, placement)
    return TrainConfig(**{**values, "resume": True})


def job_count(preset: str | None, jobs: int | None, device: str | None = "cpu") -> int:
    """--jobs when given, else the preset's, else on CUDA CUDA_RUNS_AT_ONCE (the suite shares the GPU among its
    runs unasked), else 1."""
    if jobs is not None:
        return jobs
    return preset_jobs(preset) or (CUDA_RUNS_AT_ONCE if str(device).startswith("cuda") else 1)


def pack_scheme(pack: str) -> str:
    """--pack: auto is "process" until a GPU measurement shows "stream" ahead (docs/gpu.md)."""
    return "process" if pack == "auto" else pack


def run_config(base: TrainConfig, variant: Variant, seed: int) -> TrainConfig:
    return TrainConfig.from_dict(base.to_dict(), attention=variant.attention, activation=variant.activation,
                                 seed=seed, resume=True)


def finished_run(config: TrainConfig) -> FinishedRun | None:
    """The finished run of `config` in its output directory; a finished run of another recipe is an error."""
    return finished_record(RunPaths.of(config), config, "use another --output-dir for this one")


def _check_one_recipe(runs: Sequence[FinishedRun], directory: Path) -> None:
    differing = [name for name in SHARED_FIELDS if len({json.dumps(r.config.get(name)) for r in runs}) > 1]
    if differing:
        values = "; ".join(f"{name}: {', '.join(sorted({str(r.config.get(name)) for r in runs}))}"
                           for name in differing)
        raise UserError(f"{directory} holds runs of different recipes ({values}), which one table cannot "
                        f"compare: give each recipe its own --output-dir")


def _group(variants: Iterable[Variant],
           runs: Iterable[tuple[Variant, FinishedRun]]) -> dict[Variant, list[FinishedRun]]:
    groups: dict[Variant, list[FinishedRun]] = {v: [] for v in variants}
    for variant, run in runs:
        groups.setdefault(variant, []).append(run)
    return groups


def _log(message: str) -> None:
    print(message, flush=True)


MAX_SEEDS = 1000  # runs per configuration: a table's interval hardly narrows past a few dozen seeds
JOBS_PER_CORE = 4  # runs at once per core: a run on a GPU needs a core too, and more only wait on each other
# Runs sharing one GPU when --jobs is not given: on an H200 seven processes trained 2.43x one run's images/s
# (docs/gpu.md), and the reference's table has seven distinct runs.
CUDA_RUNS_AT_ONCE = 8


@dataclass(frozen=True)
class SuiteRequest:
    """A suite, complete, as the command line (or a caller) asks for it: which table, the configuration every run
    shares (the output folder in it), the rows, the seeds, the runs at once and how they share the device."""

    suite: Suite
    base: TrainConfig
    variants: Sequence[Variant]
    seeds: Sequence[int]
    jobs: int = 1
    pack: str = "auto"


def run_suite(request: SuiteRequest, log: Callable[[str], None] = _log) -> int:
    """Train (or reuse, or resume) every variant for every seed, then write the tables and figures. The plan is
    said before anything is trained: how many runs, how many finished earlier, how many to train."""
    suite, base, variants, seeds, jobs, pack = (request.suite, request.base, request.variants, request.seeds,
                                                request.jobs, request.pack)
    _check_suite(seeds, jobs)
    plan = _plan(base, variants, seeds)
    directory = Path(base.output_dir)
    log(f"{suite.name}: {len(plan)} run(s), {len(variants)} configuration(s) x {len(seeds)} seed(s), in {directory}")
    done, missing = _scan(suite, plan, log)
    at_once = min(jobs, len(missing))
    scheme = pack_scheme(pack)
    here = {"stream": " in this process", "fused": " in this process, the seeds of each model stepped as one"}
    pace = f", {at_once} at a time" + here.get(scheme, "") if at_once > 1 else ""
    estimate = _estimate(plan, done, missing, at_once)
    log(f"{suite.name}: {len(done)} finished earlier, {len(missing)} to train{pace}{estimate}")
    code = _train_missing(missing, jobs, scheme, log)
    if code == 130:
        log(f"{suite.name}: interrupted; run the same command again to finish the missing runs")
    if code != 0:
        return code
    runs: list[tuple[Variant, FinishedRun]] = []
    for i, (variant, config) in enumerate(plan):
        run = done[i] if i in done else finished_run(config)
        if run is None:
            raise UserError(f"{RunPaths.of(config).name} ended without a complete summary in {directory}")
        runs.append((variant, run))
    groups = _group(variants, runs)
    with file_failure(directory, _TABLES_AGAIN.format(directory=directory)):
        written = write_suite_outputs(suite, groups, directory) + write_lambda_figure(groups, directory)
        if is_reference_recipe(base.to_dict()):  # with the other suite's runs, where they share the folder
            everything = ((variant_of(r.config), r) for r in load_finished_runs(directory))
            written += write_reference_table(list(everything), directory)
    log(f"\n{(directory / f'{suite.name}.md').read_text()}")
    log(f"{suite.name}: wrote {', '.join(str(p) for p in written)}")
    return 0


def _check_suite(seeds: Sequence[int], jobs: int) -> None:
    """Refuse, before any work, a suite that cannot run here or would take longer to plan than is meant."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        error = UserError("a suite starts its trainings itself and does not run under torchrun: start it without "
                          "torchrun, or each of its runs with torchrun -m sbattn train", code=2)
        error.quiet = os.environ.get("RANK", "0") != "0"  # every rank refuses; rank 0 says so, once
        raise error
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: need at least 1", code=2)
    cores = available_cores()
    if jobs > JOBS_PER_CORE * cores:
        raise UserError(f"--jobs {jobs}: at most {JOBS_PER_CORE * cores} ({JOBS_PER_CORE} per core, of the {cores} "
                        f"this process may use); more runs at once only wait on each other", code=2)
    if not seeds:
        raise UserError("need at least one run per configuration (--seeds 1 or more)", code=2)
    if len(seeds) > MAX_SEEDS:
        raise UserError(f"--seeds {len(seeds)}: at most {MAX_SEEDS} runs per configuration", code=2)


def _plan(base: TrainConfig, variants: Sequence[Variant], seeds: Sequence[int]) -> list[tuple[Variant, TrainConfig]]:
    """Every run, one of each variant first, then the next seed. Each variant's configuration is validated once
    (its model built on the meta device); its seeds' differ by the seed alone, which is all that is checked."""
    rows = {variant: run_config(base, variant, seeds[0]) for variant in variants}
    return [(variant, rows[variant].with_seed(seed)) for seed in seeds for variant in variants]


def _scan(suite: Suite, plan: list[tuple[Variant, TrainConfig]],
          log: Callable[[str], None]) -> tuple[dict[int, FinishedRun], list[tuple[str, TrainConfig]]]:
    """The runs of `plan` finished earlier, by their place in it, and the (tag, config) of the others."""
    done: dict[int, FinishedRun] = {}
    missing: list[tuple[str, TrainConfig]] = []
    for i, (variant, config) in enumerate(plan):
        tag = f"{suite.name} [{i + 1}/{len(plan)}] {variant.label}, seed {config.seed}"
        run = finished_run(config)
        if run is not None:
            log(f"{tag}: finished earlier, reused {RunPaths.of(config).summary.name}")
            done[i] = run
        else:
            missing.append((tag, config))
    return done, missing


def _estimate(plan: list[tuple[Variant, TrainConfig]], done: dict[int, FinishedRun],
              missing: list[tuple[str, TrainConfig]], at_once: int) -> str:
    """How long the missing runs will take at the pace of the finished ones (each configuration's own mean where
    it has one, else the mean of all), or nothing before any run has finished."""
    if not done or not missing:
        return ""
    seconds: dict[str, list[float]] = {}
    for i, run in done.items():
        seconds.setdefault(plan[i][0].label, []).append(run.summary["train_seconds"])
    overall = sum(map(sum, seconds.values())) / len(done)
    label = {config.run_name: variant.label for variant, config in plan}
    total = sum(_mean(seconds.get(label[config.run_name])) or overall for _, config in missing) / at_once
    return f"; about {_duration(total)} at the pace of the {len(done)} finished"


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def _duration(seconds: float) -> str:
    minutes = int(seconds / 60 + 0.5)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def _train_missing(missing: list[tuple[str, TrainConfig]], jobs: int, scheme: str, log: Callable[[str], None]) -> int:
    """Train each (tag, config): in this process one after another, or `jobs` at a time (no more than there are
    runs, so that the cores are shared out among the runs there are), as processes or (schemes "stream" and
    "fused") stepped in turn by this process."""
    if jobs > 1 or scheme in ("stream", "fused"):
        if any(config.download for _, config in missing):  # once here, not once per run into one file
            c = missing[0][1]
            load_cifar10(c.data_dir, c.dataset, True, c.cache_dir, c.resize)
            missing = [(tag, _without_download(config)) for tag, config in missing]
        jobs_ = [Job(tag, config) for tag, config in missing]
        if scheme == "process":
            return run_jobs(jobs_, min(jobs, len(missing)), log)
        return run_together(jobs_, min(jobs, len(missing)), log, fuse=scheme == "fused")
    for tag, config in missing:
        paths = RunPaths.of(config)  # the name it started under, if an earlier version gave it another
        log(f"{tag}: {'resuming' if paths.checkpoint.exists() else 'training'} {paths.name}")
        code = train(config).exit_code
        if code != 0:
            return code
    return 0


def _without_download(config: TrainConfig) -> TrainConfig:
    """`config` with --download off, not validated again: an action changes, not the run."""
    other = copy.copy(config)
    other.download = False
    return other


def report(directory: Path) -> list[Path]:
    """Rebuild compare.* (baseline or other attention kinds present) and ablation.* (SB runs of 2+ activations)
    from a directory's finished runs; returns the files written."""
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory", code=2)
    runs = load_finished_runs(directory)
    unfinished = sorted(printable(p.stem) for p in directory.glob("*.ckpt"))
    if unfinished:
        print(f"report: skipping {len(unfinished)} unfinished run(s) ({', '.join(unfinished)}); re-run their "
              f"suite to finish them", file=sys.stderr)
    if not runs:
        raise UserError(f"{directory} holds no finished runs (<run>.json with a complete summary)")
    _check_one_recipe(runs, directory)
    grouped = _group([], ((variant_of(r.config), r) for r in runs))
    variants = sorted(grouped, key=variant_order)
    by_variant = {v: grouped[v] for v in variants}
    with file_failure(directory, _TABLES_AGAIN.format(directory=directory)):
        return _write_report(by_variant, directory)


def _write_report(by_variant: dict[Variant, list[FinishedRun]], directory: Path) -> list[Path]:
    variants = list(by_variant)
    sb = [v for v in variants if v.use_sb]
    written: list[Path] = []
    if any(not v.use_sb for v in variants):
        written += write_suite_outputs(COMPARE, by_variant, directory)
    if len(sb) >= 2:
        labelled = {dataclasses.replace(v, label=ACTIVATION_LABELS.get(v.activation, v.activation)): by_variant[v]
                    for v in sb}
        written += write_suite_outputs(ABLATION, labelled, directory)
    written += write_reference_table([(v, r) for v, rs in by_variant.items() for r in rs], directory)
    if not written:
        raise UserError(f"{directory} holds only {sb[0].label} runs: nothing to compare (a compare suite needs "
                        f"baseline or other attention runs, an ablation SB runs of two or more activations)")
    return written + write_lambda_figure(by_variant, directory)
