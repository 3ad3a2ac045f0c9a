"""The GPU measurements (docs/gpu.md): issue #23's one call, and issue #18's two parts; each fits one device
command.

    benchmarks/gpu.sh OUT_DIR call       # issue #23, in this order: the table's seven runs at once as processes and
                                         # as one process of CUDA streams (--pack); the CUDA tests; then the
                                         # fp32-vs-bf16 pair and the table at --seeds seeds, as many whole runs as
                                         # the budget allows, skipping those docs/reference-table holds; finished
                                         # runs' JSON and CSV into OUT_DIR/reference-runs.tar.gz
    benchmarks/gpu.sh OUT_DIR merge      # here, after the call: those runs into docs/reference-table (checked by
                                         # checksum and recipe), its tables rebuilt

    benchmarks/gpu.sh OUT_DIR speed      # environment; one run of the reference's recipe in each --compile mode
                                         # (none, model, step); the fp32-vs-bf16 pair at full length, both at once
    benchmarks/gpu.sh OUT_DIR table      # the reference's eight-row table: its seven distinct runs at full length,
                                         # all at once on the one GPU (--jobs 7)
    benchmarks/gpu.sh OUT_DIR PART --dry-run  # the same steps on the CPU (fake set, tiny model, two epochs, fewer
                                              # runs, shorter limits): that they run, in under a minute each

Every figure is printed as it is measured and written at once to OUT_DIR/gpu-PART.json, so a part cut off by its
time limit leaves what it had measured. Each part stops its trainings at its --budget (a checkpoint each, as
Ctrl-C would) and then reports, for what did not finish, the epochs reached and a projection of the full length
from the measured epochs. Timings are wall-clock from the trainings' own logs: the first epoch's time includes
the process's start, loading the data and compilation; the epochs after it include evaluation and the
checkpoint. The runs' files go to --work-dir, never to OUT_DIR (the device returns at most 8 files from it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sbattn.data import load_cifar10  # noqa: E402
from sbattn.config.recipe import recipe_differences  # noqa: E402
from sbattn.errors import SbattnError, UserError  # noqa: E402
from sbattn.records.checkpoint import read_record  # noqa: E402
from sbattn.records.finished import read_finished  # noqa: E402
from sbattn.records.outputs import record_checksum  # noqa: E402
from sbattn.config import TrainConfig  # noqa: E402
from sbattn.experiments.jobs import PACKS, Job, run_jobs, run_together  # noqa: E402
from sbattn.train.pack import fusion_order  # noqa: E402
from sbattn.cli.suites import COMPARE_DEFAULT  # noqa: E402
from sbattn.experiments.suites import report, run_config  # noqa: E402
from sbattn.experiments.variants import ablation_variants, compare_variants  # noqa: E402
from sbattn.files import atomic_write  # noqa: E402

PARTS = ("speed", "table", "all", "call", "merge")
MODES = ("none", "model", "step")
TARGET_RUN_S, TARGET_TABLE_S = 120, 600  # the issue's targets: one run in 2 minutes, the table in 10
EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/\d+\s")  # a run's line at the end of each epoch (format_epoch)
USER_COMPILE_THREADS = os.environ.get("TORCHINDUCTOR_COMPILE_THREADS")
MIN_TRAINING_S = 30  # less left of a part's budget: its trainings are not started
STOP_S = 15  # kept at the end of a part's budget to stop its runs and write their figures
SKIPPABLE = ("schemes", "tests")  # part call's steps that --skip leaves out
# A dry run exercises every step on the CPU; it measures nothing, so it takes the fewest runs and seconds that still
# go through each code path. Option: (default on the GPU, default in a dry run). The seconds are limits: a dry
# run's trainings finish well within them.
DEFAULTS = {"budget": (510, 180), "modes": (",".join(MODES), "none"), "seeds": (3, 1), "at_once": (7, 2),
            "scheme_seconds": (75, 30), "tests_seconds": (90, 60)}
SINGLE_RUN_LIMIT_S = 180  # per single-run measurement of part speed (a dry run's eager one takes seconds)
# --mode fastest when no single run of part speed is at hand: step, the fastest measured on an H200 (docs/gpu.md);
# in a dry run none, as torch.compile takes minutes on a CPU (the compiled modes are tested in tests/test_train.py)
FALLBACK_MODE = ("step", "none")
# part call's CUDA tests, in one process whatever pyproject's addopts asks (the device's python3 may lack
# pytest-xdist); the dry-run tests never among them (each runs a dry run, which runs these)
CUDA_TESTS = ["-o", "addopts=-ra", "-k", "cuda and not dry_run", "tests"]


@dataclass
class Setup:
    """What a GPU measurement and its dry run differ in."""

    device: str
    dataset: str
    data_dir: str
    width: float
    epochs: int  # the reference's full length
    speed_epochs: int  # epochs of each single-run speed measurement
    milestones: list[int]
    budget_s: float  # per part
    speed_limit_s: float  # per single-run measurement
    work: Path
    mode: str  # the --compile mode of the pair, the table and the call's runs: never "fastest" (resolve_mode)
    modes: list[str]  # of the single-run measurements
    pair: bool = True  # part speed trains the fp32-vs-bf16 pair after the single runs
    requested_mode: str = "fastest"  # --mode as given
    dry_run: bool = False

    def config(self, output_dir: Path, mode: str, **values) -> TrainConfig:
        """The reference's recipe (VGG16-SB, tanh, batch 64, seed 0, evaluation every epoch) at this setup's
        size, in --compile `mode`; `values` override."""
        base = dict(device=self.device, dataset=self.dataset, data_dir=self.data_dir, width=self.width,
                    epochs=self.epochs, milestones=self.milestones, batch_size=64, seed=0, compile=mode,
                    output_dir=str(output_dir))
        return TrainConfig(**{**base, **values})


def make_setup(args: argparse.Namespace) -> Setup:
    """The part's setup from the options, their defaults (DEFAULTS) filled in; --mode resolved (resolve_mode)."""
    work, modes = Path(args.work_dir), args.modes.split(",")
    if args.dry_run:
        setup = Setup("cpu", "fake", args.data_dir or "unused", 0.0625, 2, 2, [1], args.budget,
                      SINGLE_RUN_LIMIT_S, work, args.mode, modes)
    else:
        data_dir = args.data_dir or next((d for d in ("shared/data", "../shared/data") if Path(d).is_dir()),
                                         "shared/data")
        setup = Setup("cuda", "cifar10", data_dir, 1.0, 80, 3, [40, 60, 80], args.budget, SINGLE_RUN_LIMIT_S,
                      work, args.mode, modes)
    setup.requested_mode, setup.dry_run = args.mode, args.dry_run
    setup.mode = resolve_mode(setup, _single_runs_of(args.out_dir))
    return setup


def resolve_mode(setup: Setup, single_runs: dict[str, dict]) -> str:
    """The --compile mode a part trains in: --mode when it names one; for `fastest`, the fastest of part speed's
    single runs (`single_runs`: those in OUT_DIR/gpu-speed.json, or the ones part speed has just measured), else
    FALLBACK_MODE (step; none in a dry run). Every part takes its mode from here before it trains."""
    if setup.requested_mode != "fastest":
        return setup.requested_mode
    return fastest_mode(single_runs, FALLBACK_MODE[int(setup.dry_run)])


def check_options(args: argparse.Namespace, setup: Setup) -> None:
    """Every option the part will use, refused in one line (a UserError) before anything starts."""
    def bad(option: str, why: str) -> UserError:
        value = getattr(args, option[2:].replace("-", "_"))
        return UserError(f"{option} {','.join(sorted(value)) if isinstance(value, set) else value}: {why}", code=2)

    wrong = [m for m in setup.modes if m not in MODES]
    if wrong or not setup.modes:
        raise bad("--modes", f"each must be one of {', '.join(MODES)}, comma-separated")
    wrong = sorted(set(args.skip) - set(SKIPPABLE))
    if wrong:
        raise bad("--skip", f"{', '.join(wrong)}: no such step; it can leave out {', '.join(SKIPPABLE)}")
    if not 1 <= args.seeds <= MAX_MERGED_SEEDS:
        raise bad("--seeds", f"must be from 1 to {MAX_MERGED_SEEDS}")
    if args.at_once < 1:
        raise bad("--at-once", "must be at least 1")
    for option in ("--scheme-seconds", "--tests-seconds"):
        if not getattr(args, option[2:].replace("-", "_")) > 0:
            raise bad(option, "must be more than 0")
    if not setup.budget_s >= STOP_S + MIN_TRAINING_S:
        raise bad("--budget", f"must be at least {STOP_S + MIN_TRAINING_S} s: a part keeps {STOP_S} s to stop its "
                              f"runs and starts no training with under {MIN_TRAINING_S} s left")
    if args.part == "merge":
        archive = args.out_dir / "reference-runs.tar.gz"
        if not archive.is_file():
            raise UserError(f"{archive}: no such file; merge takes the folder that part call returned", code=2)
        return
    if not setup.dry_run and not Path(setup.data_dir).exists():
        raise UserError(f"--data-dir {setup.data_dir}: no such folder; put the CIFAR-10 archive there (docs/gpu.md: "
                        f"mkdir -p shared/data && cp ../shared/data/cifar10-jpeg.tar.gz shared/data/)", code=2)
    for mode in dict.fromkeys([setup.mode, *setup.modes]):  # the runs' configurations, checked as they will train
        setup.config(setup.work, mode)


class Recorder:
    """The part's figures: printed as they come, and the whole JSON rewritten after each."""

    def __init__(self, path: Path, head: dict):
        self.path, self.data = path, dict(head)
        self.save()

    def put(self, key: str, value, line: str | None = None) -> None:
        self.data[key] = value
        self.save()
        if line:
            print(line, flush=True)

    def note(self, line: str) -> None:
        self.data.setdefault("notes", []).append(line)
        self.save()
        print(f"note: {line}", flush=True)

    def save(self) -> None:
        text = json.dumps(self.data, indent=1, default=str).encode()
        atomic_write(self.path, lambda f: f.write(text))


def environment(setup: Setup) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "cpu_cores": os.cpu_count(), "device": setup.device}
    if setup.device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                   capability=f"{p.major}.{p.minor}", driver=_nvidia_smi("driver_version"))
    return env


def _nvidia_smi(field_name: str) -> str | None:
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"], text=True,
                              capture_output=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------ trainings under a deadline


@dataclass
class Watch:
    """When each epoch line of each job's log appeared, in seconds from the start of the trainings."""

    jobs: list[Job]
    started: float = field(default_factory=time.perf_counter)
    epochs: dict[str, dict[int, float]] = field(default_factory=dict)

    def poll(self) -> None:
        now = time.perf_counter() - self.started
        for job in self.jobs:
            try:
                lines = job.paths.log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                m = EPOCH_LINE.match(line.strip())
                if m:
                    self.epochs.setdefault(job.label, {}).setdefault(int(m.group(1)), now)


def train_jobs(jobs: list[Job], deadline: float, scheme: str = "process", at_once: int | None = None,
               fresh: bool = True) -> tuple[int, Watch]:
    """Train `jobs`, `at_once` at a time (all by default), as `sbattn compare --pack SCHEME --jobs K` does, in
    fresh output directories unless not `fresh`; at `deadline` (perf_counter) each is stopped as Ctrl-C would
    stop it, with its checkpoint. Returns the suite's status and the epochs' times."""
    for directory in {Path(job.config.output_dir) for job in jobs} if fresh else ():
        shutil.rmtree(directory, ignore_errors=True)  # an earlier try's logs and runs would be taken for these
    if not USER_COMPILE_THREADS:  # K runs compiling at once share the cores, as their threads do
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(jobs)))
    watch, done = Watch(jobs), threading.Event()

    def watching() -> None:
        while not done.wait(0.1):
            watch.poll()
            if time.perf_counter() > deadline:
                os.kill(os.getpid(), signal.SIGINT)  # run_jobs passes it on to every run
                done.wait(30)  # the runs save and stop; once more only if they have not

    previous = signal.signal(signal.SIGINT, lambda *a: None)  # a late stop after run_jobs returned: ignored
    thread = threading.Thread(target=watching, daemon=True)
    thread.start()
    say = lambda line: print(f"  {line}", flush=True)  # noqa: E731
    try:
        if scheme == "process":
            status = run_jobs(jobs, at_once or len(jobs), say)
        else:
            status = run_together(jobs, at_once or len(jobs), say, fuse=scheme == "fused")
    except KeyboardInterrupt:  # the watcher's second stop: the runs had not stopped 30 s after the first
        status = 130
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGINT, previous)
    watch.poll()
    return status, watch


def run_figures(job: Job, watch: Watch, full_epochs: int) -> dict:
    """What one run measured: epochs reached, accuracies, its epochs' wall times, and its full length
    projected from them when it did not finish."""
    times = watch.epochs.get(job.label, {})
    done = max(times, default=0)
    intervals = [times[e] - times[e - 1] for e in range(2, done + 1) if e - 1 in times]
    figures = {"run": job.config.run_name, "epochs_done": done, "first_epoch_s": times.get(1),
               "epoch_s": statistics.median(intervals) if intervals else None}
    figures.update(_history_figures(job))
    if figures["epoch_s"]:
        figures["projected_s"] = times[1] + (full_epochs - 1) * figures["epoch_s"]
        figures["epoch_img_s"] = figures.get("train_images", 0) / figures["epoch_s"]
    if figures.get("finished"):
        figures["wall_s"] = times.get(full_epochs)
    return figures


def _history_figures(job: Job) -> dict:
    """From the run's finished summary, else from its checkpoint: the final accuracy (the final weights in fp32),
    each epoch's (in the training precision), and the training speed."""
    summary_path, checkpoint = job.paths.summary, job.paths.checkpoint
    summary: dict = {}
    if summary_path.exists():
        record = json.loads(summary_path.read_text())
        history, summary = record["history"], record["summary"]
    elif checkpoint.exists():
        history = read_record(checkpoint)["history"]
    else:
        return {"finished": False, "error": _last_lines(job.paths.log)}
    steady = [h["images_per_sec"] for h in history[1:]] or [h["images_per_sec"] for h in history]
    images = history[-1]["images_per_sec"] * history[-1]["seconds"] if history else 0
    return {"finished": summary.get("complete", False), "final_eval_acc": summary.get("final_eval_acc"),
            "eval_acc": [h["eval_acc"] for h in history], "train_loss": [h["train_loss"] for h in history],
            "train_img_s": statistics.median(steady) if steady else None, "train_images": round(images)}


def _last_lines(path: Path, n: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "no log"


def _fmt(value, spec: str = ".1f", unit: str = " s") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


# ------------------------------------------------------------------------------------------------ part 1


def measure_data(setup: Setup, rec: Recorder) -> float:
    """Decode the data once (into the fresh cache every training then reads): the decoding's share of a run."""
    started = time.perf_counter()
    data = load_cifar10(setup.data_dir, setup.dataset, progress=False)
    seconds = time.perf_counter() - started
    rec.put("data", {"source": data.source, "decode_s": seconds, "train_images": len(data.train_labels)},
            f"data: {data.source}, decoded in {seconds:.1f} s")
    return seconds


def measure_single_runs(setup: Setup, rec: Recorder, decode_s: float, deadline: float) -> dict[str, dict]:
    """One run of the reference's recipe alone on the device for a few epochs, in each --compile mode."""
    results: dict[str, dict] = {}
    for mode in setup.modes:
        job = Job(f"one run, --compile {mode}", setup.config(setup.work / f"speed-{mode}", mode,
                                                              epochs=setup.speed_epochs))
        status, watch = train_jobs([job], min(deadline, time.perf_counter() + setup.speed_limit_s))
        figures = {"status": status, **run_figures(job, watch, setup.epochs)}
        if figures.get("projected_s"):
            figures["projected_with_decoding_s"] = figures["projected_s"] + decode_s
        results[mode] = figures
        rec.put("single_run", results,
                f"{job.label}: first epoch {_fmt(figures['first_epoch_s'])} (start, data, compilation), then "
                f"{_fmt(figures['epoch_s'], '.2f')} an epoch ({_fmt(figures.get('train_img_s'), '.0f', '')} img/s "
                f"training, {_fmt(figures.get('epoch_img_s'), '.0f', '')} img/s with evaluation); {setup.epochs} "
                f"epochs with decoding: {_fmt(figures.get('projected_with_decoding_s'), '.0f')} projected "
                f"(target {TARGET_RUN_S} s)")
    return results


def fastest_mode(results: dict[str, dict], default: str) -> str:
    timed = {m: r["projected_s"] for m, r in results.items() if r.get("projected_s")}
    return min(timed, key=timed.get) if timed else default


def train_part(setup: Setup, rec: Recorder, key: str, jobs_of, deadline: float) -> dict | None:
    """Train the jobs that `jobs_of(mode)` makes, all at once until `deadline`, in setup.mode; if none of them
    got through an epoch in the whole-step mode, once more with the model compiled. Records rec[key]; None when
    too little time is left to start."""
    if deadline - time.perf_counter() < MIN_TRAINING_S:
        rec.note(f"{key}: not started, {max(0, deadline - time.perf_counter()):.0f} s of the budget left")
        return None
    for mode in [setup.mode] + (["model"] if setup.mode == "step" else []):
        jobs = jobs_of(mode)
        status, watch = train_jobs(jobs, deadline)
        runs = {job.label: run_figures(job, watch, setup.epochs) for job in jobs}
        result = {"mode": mode, "status": status, "runs": runs, "elapsed_s": time.perf_counter() - watch.started,
                  "finished": all(r.get("finished") for r in runs.values())}
        rec.put(key, result)
        if any(r["epochs_done"] for r in runs.values()) or time.perf_counter() > deadline:
            break
        error = next(iter(runs.values())).get("error", "")
        rec.note(f"{key}: no run finished an epoch with --compile {mode} (status {status}; the first run's log "
                 f"ends: {error!r})")
    return result


def measure_precision_pair(setup: Setup, rec: Recorder, deadline: float) -> None:
    """The reference's command in fp32 and in bf16, same seed, full length, both at once."""
    def jobs_of(mode: str) -> list[Job]:
        return [Job(p, setup.config(setup.work / f"pair-{p}", mode, precision=p)) for p in ("fp32", "bf16")]

    result = train_part(setup, rec, "precision_pair", jobs_of, deadline)
    if result is None:
        return
    runs = result["runs"]
    if result["finished"]:  # the final weights of each, evaluated in fp32: the runs' final accuracies
        compared, accs = "final accuracy", {p: 100 * r["final_eval_acc"] for p, r in runs.items()}
    else:  # the last epoch both reached, each evaluated in its training precision
        common = min(len(r.get("eval_acc", [])) for r in runs.values())
        compared = f"epoch {common}/{setup.epochs}"
        accs = {p: 100 * r["eval_acc"][common - 1] if common else None for p, r in runs.items()}
    result.update(compared=compared, accuracy_pct=accs,
                  bf16_minus_fp32_pp=None if None in accs.values() else accs["bf16"] - accs["fp32"])
    rec.put("precision_pair", result,
            f"fp32 vs bf16 (--compile {result['mode']}, {'finished' if result['finished'] else 'stopped'}): "
            f"{compared}: fp32 {_fmt(accs['fp32'], '.2f', '%')}, bf16 {_fmt(accs['bf16'], '.2f', '%')}; "
            f"projected full length {_fmt(runs['fp32'].get('projected_s'), '.0f')} and "
            f"{_fmt(runs['bf16'].get('projected_s'), '.0f')} side by side")


def part_speed(setup: Setup, rec: Recorder, deadline: float) -> None:
    decode_s = measure_data(setup, rec)
    results = measure_single_runs(setup, rec, decode_s, deadline)
    setup.mode = resolve_mode(setup, results)  # --mode fastest: the fastest of these
    if setup.pair:
        measure_precision_pair(setup, rec, deadline)


# ------------------------------------------------------------------------------------------------ part 2


def table_jobs(setup: Setup, directory: Path, mode: str, seed: int = 0, **values) -> list[Job]:
    """The reference's two tables as seven runs in one directory: baseline, SE and SB(Sigmoid), then SB with the
    other activations (the ablation's sigmoid row is the comparison's run)."""
    base = setup.config(directory, mode, **values)
    variants = {v.key: v for v in compare_variants(COMPARE_DEFAULT, "sigmoid") + ablation_variants()}
    return [Job(key if seed == 0 else f"{key} seed {seed}", run_config(base, v, seed)) for key, v in variants.items()]


def part_table(setup: Setup, rec: Recorder, deadline: float, single_runs: dict[str, dict]) -> None:
    directory = setup.work / "table"
    result = train_part(setup, rec, "table", lambda mode: table_jobs(setup, directory, mode), deadline)
    if result is None:
        return
    runs = result["runs"].values()
    aggregate = sum(r.get("epoch_img_s") or 0 for r in runs)
    projections = [r.get("projected_s") for r in runs]
    projected = None if None in projections else max(projections)  # they train side by side
    alone_img_s = single_runs.get(result["mode"], {}).get("epoch_img_s")  # part speed's, in this OUT_DIR
    result.update(jobs=len(result["runs"]), aggregate_img_s=aggregate, projected_s=projected,
                  wall_s=result["elapsed_s"] if result["finished"] else None, one_run_alone_img_s=alone_img_s,
                  throughput_vs_one_run=aggregate / alone_img_s if alone_img_s else None)
    if result["finished"]:
        report(directory)
        result["tables"] = {name: (directory / f"{name}.md").read_text() for name in ("compare", "ablation")}
    rec.put("table", result,
            f"table ({len(result['runs'])} runs at once, --compile {result['mode']}): "
            f"{'finished in ' + _fmt(result['wall_s'], '.0f') if result['finished'] else 'stopped'}; projected "
            f"{_fmt(projected, '.0f')} (target {TARGET_TABLE_S} s); {aggregate:.0f} img/s together"
            + (f", {result['throughput_vs_one_run']:.2f}x one run alone" if result["throughput_vs_one_run"] else ""))
    if "tables" in result:
        print("\n".join(result["tables"].values()), flush=True)


# ------------------------------------------------------------------------- part call: issue #23's one device call


FUSED_SEEDS = 3  # the fused scheme's table: each model's three seeds stepped as one


def measure_schemes(setup: Setup, rec: Recorder, seconds: float, at_once: int) -> str:
    """One run alone, then each scheme on the same work: the table at FUSED_SEEDS seeds, `at_once` runs at a time
    (the table's seven: seed 0's seven runs as processes or CUDA streams; fused, each model's seeds next to each
    other, as the pack orders them, so that they step as one), each for `seconds`: aggregate images/s of the runs
    at once, each against one run alone. Returns the faster scheme."""
    short = dict(epochs=setup.speed_epochs, milestones=[setup.speed_epochs])
    alone = Job("one run alone", setup.config(setup.work / "schemes-alone", setup.mode, **short))
    status, watch = train_jobs([alone], time.perf_counter() + seconds)
    alone_img_s = run_figures(alone, watch, setup.epochs).get("epoch_img_s")
    result = {"mode": setup.mode, "seconds_each": seconds, "at_once": at_once, "one_run_alone_img_s": alone_img_s}
    for scheme in PACKS:
        mode = "none" if scheme == "fused" else setup.mode  # fusion steps eagerly
        jobs = [j for seed in range(FUSED_SEEDS)
                for j in table_jobs(setup, setup.work / f"schemes-{scheme}", mode, seed, **short)]
        if scheme == "fused":  # each model's seeds next to each other, as the pack orders them
            jobs = [jobs[i] for i in fusion_order([j.config for j in jobs])]
        jobs = jobs[:at_once]  # these at once, and no other after them: their images/s add up
        status, watch = train_jobs(jobs, time.perf_counter() + seconds, scheme)
        runs = {job.label: run_figures(job, watch, setup.epochs) for job in jobs}
        aggregate = sum(r.get("epoch_img_s") or 0 for r in runs.values())
        result[scheme] = {"status": status, "mode": mode, "aggregate_img_s": aggregate, "runs": runs,
                          "vs_one_run_alone": aggregate / alone_img_s if alone_img_s else None}
        rec.put("schemes", result, f"{len(runs)} runs at once, --pack {scheme}: {aggregate:.0f} img/s together"
                + (f", {aggregate / alone_img_s:.2f}x one run alone" if alone_img_s else ""))
    faster = max(PACKS, key=lambda k: result[k]["aggregate_img_s"])
    rec.put("schemes", {**result, "faster": faster}, f"faster: --pack {faster}")
    return faster


def measure_cuda_tests(rec: Recorder, seconds: float, dry_run: bool) -> None:
    """The test suite's CUDA tests (CUDA_TESTS: CUDA against the CPU, the whole step under CUDA graphs); in a dry
    run only collected (`pytest --collect-only`), as on a CPU they skip."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               *(["--collect-only"] if dry_run else []), *CUDA_TESTS]
    try:
        proc = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                              timeout=seconds)
        result = {"returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:]}
    except subprocess.TimeoutExpired:
        result = {"returncode": None, "tail": f"stopped after {seconds:.0f} s"}
    result.update(command=" ".join(command[1:]), collect_only=dry_run)
    rec.put("cuda_tests", result, f"cuda tests{' (collected only: a dry run)' if dry_run else ''}: exit status "
            f"{result['returncode']}; {result['tail'].strip().splitlines()[-1] if result['tail'].strip() else ''}")


def reference_jobs(setup: Setup, directory: Path, mode: str, seeds: int) -> list[Job]:
    """The fp32 run of the reference's command (its own folder: its files' names are the bf16 run's), then the
    table's seven runs seed by seed; the bf16 half of the fp32-vs-bf16 pair is the table's Tanh run of seed 0."""
    tanh = next(job for job in table_jobs(setup, directory, mode) if job.config.activation == "tanh"
                and job.config.attention == "sb")
    fp32 = Job("reference command, fp32", TrainConfig.from_dict(tanh.config.to_dict(), precision="fp32",
                                                                output_dir=str(directory / "fp32")))
    return [fp32, *(job for seed in range(seeds) for job in table_jobs(setup, directory, mode, seed))]


def train_reference_runs(setup: Setup, rec: Recorder, deadline: float, scheme: str, args) -> None:
    """Every run of reference_jobs that args.runs_dir does not hold finished, `args.at_once` at a time, until
    the deadline; the finished ones' JSON and CSV (no weights) into OUT_DIR/reference-runs.tar.gz."""
    directory = setup.work / "reference-table"
    shutil.rmtree(directory, ignore_errors=True)
    held = _finished_names(Path(args.runs_dir))
    mode = "none" if scheme == "fused" else setup.mode  # fusion steps eagerly; --compile changes no result
    jobs = [job for job in reference_jobs(setup, directory, mode, args.seeds) if _archive_name(job) not in held]
    rec.put("reference_runs", {"scheme": scheme, "held_before": sorted(held), "to_train": len(jobs)},
            f"reference runs: {len(held)} held in {args.runs_dir}, {len(jobs)} to train, {args.at_once} at a "
            f"time, --pack {scheme}")
    if deadline - time.perf_counter() < MIN_TRAINING_S or not jobs:
        return
    status, watch = train_jobs(jobs, deadline, scheme, args.at_once, fresh=False)
    runs = {job.label: run_figures(job, watch, setup.epochs) for job in jobs}
    finished = [job for job in jobs if runs[job.label].get("finished")]
    archive = args.out_dir / "reference-runs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for job in finished:
            for path in (job.paths.summary, job.paths.history_csv):
                tar.add(path, arcname=_archive_name(job, path.name))
    pair = {p: runs[label].get("final_eval_acc") for p, label in (("fp32", jobs[0].label), ("bf16", "sb-tanh"))
            if label in runs} if jobs[0].config.precision == "fp32" else {}
    rec.put("reference_runs", {**rec.data["reference_runs"], "status": status, "runs": runs,
                               "finished": [job.config.run_name for job in finished], "archive": archive.name,
                               "pair_final_eval_acc": pair},
            f"reference runs: {len(finished)} of {len(jobs)} finished, in {archive.name}")


def _archive_name(job: Job, file: str | None = None) -> str:
    """A run's place in the archive and in the runs folder: fp32/ for the fp32 run, its stem otherwise."""
    folder = "fp32/" if Path(job.config.output_dir).name == "fp32" else ""
    return f"{folder}{file or job.config.run_name}"


def _finished_names(runs_dir: Path) -> set[str]:
    names = set()
    for path in [*runs_dir.glob("*.json"), *runs_dir.glob("fp32/*.json")]:
        try:
            run = read_finished(path)
        except UserError:
            continue
        if run is not None:
            names.add(f"{'fp32/' if path.parent.name == 'fp32' else ''}{path.stem}")
    return names


def part_call(setup: Setup, rec: Recorder, deadline: float, args) -> None:
    """In this order: the schemes side by side, the CUDA tests, then the fp32-vs-bf16 pair and the table's runs
    at args.seeds seeds that args.runs_dir lacks, for the rest of the budget."""
    measure_data(setup, rec)  # once, into the cache every run reads; a set that cannot be read stops here
    scheme = "process"
    if "schemes" not in args.skip:
        scheme = measure_schemes(setup, rec, args.scheme_seconds, args.at_once)
    if "tests" not in args.skip:
        measure_cuda_tests(rec, args.tests_seconds, setup.dry_run)
    train_reference_runs(setup, rec, deadline, args.pack or scheme, args)


def merge(archive: Path, into: Path, setup: Setup) -> int:
    """Bring the runs of a device's reference-runs.tar.gz into `into` (docs/reference-table): each one only when
    it is a finished run whose checksum matches its contents and whose recipe is the reference's run of its row
    and seed; then rebuild the tables there."""
    expected: dict[int, dict[str, Job]] = {}  # by seed: the runs of that seed, by their name in the archive

    def job_of(name: str, seed) -> Job | None:
        if not isinstance(seed, int) or not 0 <= seed < MAX_MERGED_SEEDS:
            return None
        if seed not in expected:
            jobs = reference_jobs(setup, into, setup.mode, 1) if seed == 0 else table_jobs(setup, into, setup.mode,
                                                                                             seed)
            expected[seed] = {_archive_name(job): job for job in jobs}
        return expected[seed].get(name)

    added = 0
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
        for path in sorted(Path(tmp).rglob("*.json")):
            name = str(path.relative_to(tmp).with_suffix(""))
            problem = _merge_problem(path, job_of(name, _saved_seed(path)))
            if problem:
                print(f"merge: {name}: {problem}; left out")
                continue
            target = into / f"{name}.json"
            if target.exists():
                print(f"merge: {name}: already there; kept")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            for part in (path, path.with_suffix(".csv")):
                if part.exists():
                    shutil.copyfile(part, target.with_suffix(part.suffix))
            added += 1
    print(f"merge: {added} run(s) added to {into}")
    if added or any(into.glob("*.json")):
        report(into)
    return 0


MAX_MERGED_SEEDS = 1000  # as a suite's --seeds


def _saved_seed(path: Path):
    try:
        return json.loads(path.read_text())["summary"]["config"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _merge_problem(path: Path, job: Job | None) -> str | None:
    if job is None:
        return "not a run of the reference's tables"
    try:
        run = read_finished(path)
    except UserError as e:
        return str(e)
    if run is None:
        return "not a finished run"
    record = json.loads(path.read_text())
    if record.get("checksum") != record_checksum(record):
        return "its checksum does not match its contents (edited or damaged on the way)"
    differences = recipe_differences(run.config, job.config)
    return f"another recipe ({'; '.join(differences)})" if differences else None


# ------------------------------------------------------------------------------------------------ main


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as sbattn's own commands refuse an option, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _default(option: str) -> str:
    gpu, dry = DEFAULTS[option]
    return f"default: {gpu}; dry run {dry}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="gpu.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, help="where gpu-PART.json goes (and part call's reference-runs.tar.gz)")
    p.add_argument("part", nargs="?", choices=PARTS, default="all")
    p.add_argument("--dry-run", action="store_true",
                   help="the same steps on the CPU, to check that they run, not to measure: fake set, width 0.0625, "
                        "2 epochs, and smaller defaults (each option's 'dry run' one): --modes none, --mode fastest "
                        f"is none, --seeds {DEFAULTS['seeds'][1]}, --at-once {DEFAULTS['at_once'][1]}, shorter "
                        "limits; part call's CUDA tests only collected. A dry run of each part takes under a "
                        "minute on two CPU cores")
    p.add_argument("--data-dir", help="CIFAR-10 (default: shared/data, else ../shared/data)")
    p.add_argument("--work-dir", default="/tmp/sbattn-gpu", help="the runs' files (default: /tmp/sbattn-gpu)")
    p.add_argument("--budget", type=float,
                   help=f"seconds per part, trainings stopped at its end ({_default('budget')})")
    p.add_argument("--modes", help=f"--compile modes of part speed's single runs ({_default('modes')})")
    p.add_argument("--mode", choices=(*MODES, "fastest"), default="fastest",
                   help="--compile mode of the pair, the table and part call's runs (default fastest: the fastest "
                        f"single run of part speed, in OUT_DIR or just measured, else {FALLBACK_MODE[0]}, the "
                        f"fastest measured on an H200; in a dry run else {FALLBACK_MODE[1]})")
    p.add_argument("--no-pair", action="store_true", help="part speed: the single runs only")
    p.add_argument("--seeds", type=int, help=f"part call: the table's runs at seeds 0..N-1 ({_default('seeds')})")
    p.add_argument("--at-once", type=int, help="part call: runs trained at once, in the schemes' measurement too "
                                               f"({_default('at_once')}; 7 is the table's)")
    p.add_argument("--pack", choices=PACKS, help="part call: the scheme of the runs (default: the faster measured)")
    p.add_argument("--skip", default="", help=f"part call: steps left out, of {','.join(SKIPPABLE)} (done in an "
                                              "earlier call)")
    p.add_argument("--scheme-seconds", type=float, help=f"part call: seconds per scheme ({_default('scheme_seconds')})")
    p.add_argument("--tests-seconds", type=float,
                   help=f"part call: the CUDA tests' limit ({_default('tests_seconds')})")
    p.add_argument("--runs-dir", default="docs/reference-table",
                   help="parts call and merge: the finished runs kept (default: docs/reference-table)")
    args = p.parse_args(argv)
    for option, defaults in DEFAULTS.items():
        if getattr(args, option) is None:
            setattr(args, option, defaults[int(args.dry_run)])
    args.skip = set(filter(None, args.skip.split(",")))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # every default resolved and every option checked before anything starts
        setup = make_setup(args)
        setup.pair = not args.no_pair
        check_options(args, setup)
    except SbattnError as e:
        print(f"gpu.sh: error: {e}", file=sys.stderr)
        return 2
    try:
        return run_parts(args, setup)
    except SbattnError as e:  # the data or a file, found unusable on the way: one line, as sbattn says it
        print(f"gpu.sh: {e.label}: {e}", file=sys.stderr)
        return e.code


def run_parts(args: argparse.Namespace, setup: Setup) -> int:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    setup.work.mkdir(parents=True, exist_ok=True)
    os.environ["SBATTN_CACHE"] = str(setup.work / "cache")  # a cold cache: decoding is measured, once
    if args.part == "merge":  # here, after the call: the runs' recipes rebuilt on this machine's device
        setup.device = setup.device if torch.cuda.is_available() else "cpu"
        return merge(args.out_dir / "reference-runs.tar.gz", Path(args.runs_dir), setup)
    for part in ("speed", "table") if args.part == "all" else (args.part,):
        started = time.perf_counter()
        single = _single_runs_of(args.out_dir)
        setup.mode = resolve_mode(setup, single)  # the table after speed: from the single runs it just measured
        # part speed with --mode fastest: the fastest of the single runs it measures first
        mode = "fastest single run" if part == "speed" and setup.requested_mode == "fastest" else setup.mode
        rec = Recorder(args.out_dir / f"gpu-{part}.json", {
            "part": part, "dry_run": args.dry_run, "started": datetime.now().isoformat(timespec="seconds"),
            "budget_s": setup.budget_s, "mode": mode, "environment": environment(setup)})
        print(f"== part {part} (--compile {mode}): {json.dumps(rec.data['environment'])}", flush=True)
        deadline = started + setup.budget_s - STOP_S  # time to stop the runs and write their figures
        if part == "speed":
            part_speed(setup, rec, deadline)
        elif part == "call":
            part_call(setup, rec, deadline, args)
        else:
            part_table(setup, rec, deadline, single)
        rec.put("seconds", time.perf_counter() - started, f"== part {part}: {time.perf_counter() - started:.0f} s")
    return 0


def _single_runs_of(out_dir: Path) -> dict:
    """Part speed's single runs, when it ran into the same OUT_DIR."""
    try:
        return json.loads((out_dir / "gpu-speed.json").read_text()).get("single_run", {})
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    sys.exit(main())
