"""`sbattn compare`, `sbattn ablate` and `sbattn report`: every option of train, plus seeds, jobs and presets."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .options import add_config_options, file_options, given_options
from ..errors import UserError
from ..experiments.jobs import PACKS
from ..experiments.suites import (CUDA_RUNS_AT_ONCE, JOBS_PER_CORE, MAX_SEEDS, SuiteRequest, job_count, report,
                                  run_suite, suite_config)
from ..experiments.variants import ABLATION, COMPARE, Suite, ablation_variants, compare_variants
from ..nn import list_attention

__all__ = ["add_compare_options", "run_compare", "add_ablate_options", "run_ablate", "add_report_options",
           "run_report", "base_config", "seed_list", "suite_request"]
COMPARE_DEFAULT = ("none", "se", "sb")  # the reference's table


def _add_suite_options(parser: argparse.ArgumentParser, suite: Suite, skip: tuple[str, ...],
                       help_defaults: dict[str, str]) -> None:
    add_config_options(parser, skip=skip, config_help=(
        f"a JSON or TOML file of the options every run shares (a finished run's JSON works as is), over the "
        f"preset's; options given on the command line win over it; {', '.join(skip)}: ignored, the suite sets them "
        f"for each run; seed: the first seed; TOML for a .toml name; - reads JSON from standard input"))
    parser.set_defaults(per_run_options=skip)
    for action in parser._actions:
        if action.dest == "seed":
            action.help = "the first seed of the suite's runs (see --seeds); also names their files (default: 0)"
        if action.dest in help_defaults and action.help is not None:
            action.help = action.help.rsplit(" (default:", 1)[0] + f" (default: {help_defaults[action.dest]})"
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help=f"runs per configuration, seeds 0..N-1 (or SEED..SEED+N-1 with --seed), at most "
                             f"{MAX_SEEDS} (default: 1)")
    parser.add_argument("--jobs", type=int, default=None, metavar="K",
                        help="train K runs at once (see --pack; on a CPU the cores are shared out; on a GPU small "
                             f"models leave room for several), at most {JOBS_PER_CORE} per core; none given: the "
                             f"preset's, else {CUDA_RUNS_AT_ONCE} on CUDA, else 1")
    parser.add_argument("--pack", choices=("auto", *PACKS), default="auto", metavar="PACK",
                        help="how the runs at once share the device: process (each its own sbattn train process), "
                             "stream (all in this process, a step of each in turn, on CUDA each on its own stream), "
                             "fused (as stream, the seeds of each model stepped as one batched model); "
                             "auto: process, the scheme measured fastest so far (default: auto)")


def _attention_list(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in str(text).strip("'\"[]").split(",") if k.strip())
    allowed = ["none", *list_attention()]
    unknown = [k for k in kinds if k not in allowed]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of {', '.join(allowed)}")
    return tuple(dict.fromkeys(kinds))


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    _add_suite_options(parser, COMPARE, skip=("use_sb", "use_se", "resume", "overwrite", "attention"),
                       help_defaults={"activation": "sigmoid (the reference's table)",
                                      "output_dir": "./results/compare[-PRESET][-layer]"})
    parser.add_argument("--attention", type=_attention_list, default=COMPARE_DEFAULT, metavar="KINDS",
                        help=f"the attention kinds to compare, comma-separated, from none, "
                             f"{', '.join(list_attention())} (default: {','.join(COMPARE_DEFAULT)})")


def add_ablate_options(parser: argparse.ArgumentParser) -> None:
    _add_suite_options(parser, ABLATION, skip=("use_sb", "use_se", "activation", "resume", "overwrite", "attention"),
                       help_defaults={"output_dir": "./results/ablation[-PRESET][-layer]"})


def add_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a suite's output directory (compare's or ablate's --output-dir)")


def _explicit(args: argparse.Namespace) -> dict[str, Any]:
    """The shared options the user chose: --config's file, then the flags given."""
    from_file = file_options(args.config) if args.config else {}
    # The options the suite sets for each run: refused as flags by the parser, ignored in the file.
    return {k: v for k, v in {**from_file, **given_options(args)}.items() if k not in args.per_run_options}


def base_config(args: argparse.Namespace, suite: Suite) -> TrainConfig:
    """The configuration every run of the suite shares, from the preset and the flags given."""
    return suite_config(suite, args.preset, _explicit(args))


def seed_list(args: argparse.Namespace) -> list[int]:
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: need at least one run per configuration", code=2)
    if args.seeds > MAX_SEEDS:  # refused before the configuration file is read or a run planned
        raise UserError(f"--seeds {args.seeds}: at most {MAX_SEEDS} runs per configuration", code=2)
    start = _explicit(args).get("seed") or 0
    return [start + i for i in range(args.seeds)]


def suite_request(args: argparse.Namespace, suite: Suite) -> SuiteRequest:
    """The suite the options ask for, whole and validated: what experiments/ takes (never the namespace)."""
    base = base_config(args, suite)
    variants = compare_variants(args.attention, base.activation) if suite is COMPARE else ablation_variants()
    return SuiteRequest(suite, base, variants, seed_list(args), job_count(args.preset, args.jobs, base.device),
                        args.pack)


def run_compare(args: argparse.Namespace) -> int:
    return run_suite(suite_request(args, COMPARE))


def run_ablate(args: argparse.Namespace) -> int:
    return run_suite(suite_request(args, ABLATION))


def run_report(args: argparse.Namespace) -> int:
    written = report(Path(args.directory))
    for path in written:
        if path.suffix == ".md":
            print(path.read_text())
    print(f"report: wrote {', '.join(str(p) for p in written)}")
    return 0
