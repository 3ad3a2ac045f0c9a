"""Suites: options and presets, tables and statistics, figures, report, and resuming after a crash or Ctrl-C.

The first part works on synthetic run files (fast); the end-to-end part trains tiny models on the fake set.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from sbattn.cli import suites as cli
from sbattn.experiments import suites, tables, variants
from sbattn.cli import build_parser
from sbattn.errors import ConfigError, UserError
from sbattn.config import TrainConfig
from sbattn.system import available_cores
from sbattn.experiments.stats import t_quantile

TINY = ["--dataset", "fake", "--width", "0.0625", "--epochs", "2", "--batch_size", "32", "--device", "cpu",
        "--precision", "fp32", "--eval-batch-size", "256"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"sbattn {command}")
    {"compare": cli.add_compare_options, "ablate": cli.add_ablate_options,
     "report": cli.add_report_options}[command](parser)
    return parser.parse_args(argv)


def table_rows(md: str) -> list[list[str]]:
    """The body rows of the first markdown table, as lists of cells."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def assert_png(path: Path, min_bytes: int = 20_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"


# ---------------------------------------------------------------- synthetic runs

def write_run(directory: Path, accs_by_epoch: list[float], use_sb=False, use_se=False, activation="tanh", seed=0,
              params=1000, seconds=10.0, blocks=4, **config) -> Path:
    """A finished run's JSON, as train() writes it; accuracies are fractions, the last one is the final."""
    fields = {"device": "cpu", "dataset": "fake", "width": 0.0625, **config}  # config may set the last two
    c = TrainConfig(use_sb=use_sb, use_se=use_se, activation=activation, seed=seed, epochs=len(accs_by_epoch),
                    output_dir=str(directory), resume=True, **fields)
    history = []
    for epoch, acc in enumerate(accs_by_epoch, 1):
        entry = {"epoch": epoch, "lr": 0.1, "train_loss": 1.0, "train_acc": acc, "eval_loss": 1.0, "eval_acc": acc,
                 "seconds": seconds, "images_per_sec": 100.0}
        if use_sb:
            entry["lambda_abs_mean"] = [0.8 + 0.01 * epoch + 0.1 * b for b in range(blocks)]
            entry["lambda_abs_std"] = [0.3] * blocks
        history.append(entry)
    summary = {"complete": True, "run": c.run_name, "config": c.to_dict(), "seed": seed,
               "final_eval_acc": accs_by_epoch[-1], "best_eval_acc": max(accs_by_epoch), "best_epoch": 1,
               "params": params, "train_seconds": seconds * len(accs_by_epoch), "device": "cpu",
               "precision": "float32", "data": "fake", "provenance": {"device_name": "AMD EPYC"}}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{c.run_name}.json"
    path.write_text(json.dumps({"summary": summary, "history": history}))
    return path


def test_compare_table_statistics_from_synthetic_runs(tmp_path):
    # baseline 92.0 / 92.4, SE 92.5 / 92.9: difference +0.50; each variance 0.08, se = sqrt(0.04 + 0.04) = 0.2828,
    # Welch dof = 0.08^2 / (2 * 0.04^2) = 2, t_{0.975, 2} = 4.303: the interval is 0.50 +- 1.217.
    for seed, (b, se, sb) in enumerate([(0.920, 0.925, 0.931), (0.924, 0.929, 0.933)]):
        write_run(tmp_path, [0.5, b], seed=seed, params=1000, seconds=30.0)
        write_run(tmp_path, [0.5, se], use_se=True, seed=seed, params=1050, seconds=36.0)
        write_run(tmp_path, [0.5, sb], use_sb=True, activation="sigmoid", seed=seed, params=1100, seconds=45.0)
    assert cli.run_report(parse("report", [str(tmp_path)])) == 0
    md = (tmp_path / "compare.md").read_text()
    assert "| Model | Acc. |" in md and "### SB & SE" in md
    rows = table_rows(md)
    assert [r[0] for r in rows] == ["baseline", "SE", "SB(Sigmoid)"]
    assert rows[0][1:5] == ["92.20 ± 0.28%", "2", "—", "—"]
    assert rows[1][1:5] == ["92.70 ± 0.28%", "2", "+0.50", "[-0.72, +1.72]"]
    assert rows[2][1:4] == ["**93.20 ± 0.14%**", "2", "+1.00"]  # the best mean is bold, as in the seed's table
    assert [r[5] for r in rows] == ["1,000", "1,050", "1,100"]
    assert [r[6] for r in rows] == ["60 s", "72 s", "1.5 min"]
    assert "**SB(Sigmoid) − SE**: +0.50 pp" in md
    assert not (tmp_path / "ablation.md").exists()  # one SB activation: no ablation

    data = json.loads((tmp_path / "compare.json").read_text())
    se_row = data["rows"][1]
    assert se_row["n"] == 2 and se_row["acc"] == pytest.approx([92.5, 92.9])
    assert se_row["difference"]["dof"] == pytest.approx(2.0)
    assert se_row["difference"]["high"] == pytest.approx(0.5 + t_quantile(0.975, 2) * 0.08 ** 0.5)
    csv_lines = (tmp_path / "compare.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[2].startswith("SE,se,2,0 1,92.7,")
    for name in ("compare.png", "lambda.png"):
        assert_png(tmp_path / name)


def test_the_suite_figure_shows_the_tables_final_accuracies(tmp_path, monkeypatch):
    # Trained in bf16, a run's last per-epoch evaluation (bf16) and its final accuracy (fp32) differ: the bars
    # show the final one, as the table does.
    from sbattn.experiments import figures
    for seed in (0, 1):
        for kind in ({}, {"use_se": True}):
            path = write_run(tmp_path, [0.5, 0.6], seed=seed, **kind)
            record = json.loads(path.read_text())
            record["summary"]["final_eval_acc"] = 0.7 + seed / 100 + (0.1 if kind else 0)
            path.write_text(json.dumps(record))
    heights = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: heights.setdefault(
        Path(path).name, [bar.get_height() for bar in fig.axes[1].patches]))
    assert cli.run_report(parse("report", [str(tmp_path)])) == 0
    assert heights["compare.png"] == pytest.approx([70.5, 80.5])
    assert "| baseline | 70.50 ± 0.71% |" in (tmp_path / "compare.md").read_text()


def test_ablation_with_one_seed_has_no_interval(tmp_path):
    accs = {"linear": 0.9218, "relu": 0.9224, "tanh": 0.9222, "softmax": 0.9230, "sigmoid": 0.9266}
    for activation, acc in accs.items():  # written out of order: the table keeps the seed's order
        write_run(tmp_path, [0.4, acc], use_sb=True, activation=activation)
    cli.run_report(parse("report", [str(tmp_path)]))
    md = (tmp_path / "ablation.md").read_text()
    rows = table_rows(md)
    assert "| Activation | Acc. |" in md and "Δ vs Tanh" in md
    assert [r[0] for r in rows] == ["Tanh", "Sigmoid", "ReLU", "Softmax", "Linear"]
    assert [r[2] for r in rows] == ["1"] * 5
    assert rows[0][1] == "92.22% ± n/a" and rows[1][1] == "**92.66% ± n/a**"
    assert [r[3] for r in rows] == ["—", "+0.44", "+0.02", "+0.08", "-0.04"]
    assert [r[4] for r in rows] == ["—", "n/a", "n/a", "n/a", "n/a"]
    assert not (tmp_path / "compare.md").exists()
    assert_png(tmp_path / "ablation.png")
    assert_png(tmp_path / "lambda.png")


@pytest.mark.parametrize("setup, words", [
    (lambda d: None, "no finished runs"),
    (lambda d: write_run(d, [0.5], use_sb=True, activation="sigmoid"), "nothing to compare"),
    (lambda d: (write_run(d, [0.5, 0.6]), write_run(d, [0.5, 0.6], use_se=True, placement="layer")),
     "different recipes (placement: layer, stage)"),
])
def test_report_refuses_what_it_cannot_tabulate(tmp_path, setup, words):
    setup(tmp_path)
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        cli.run_report(parse("report", [str(tmp_path)]))


def test_report_of_a_missing_directory(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        cli.run_report(parse("report", [str(tmp_path / "nope")]))


REFERENCE_RECIPE = {"dataset": "cifar10", "width": 1.0}  # with write_run's 80 accuracies, the preset's recipe
# Each configuration's two seeds, final accuracy (fraction), in the reference's order; the published figures are
# its README's.
REFERENCE_ROWS = [("baseline", {}, (0.890, 0.894), "92.27%"), ("SE", {"use_se": True}, (0.895, 0.899), "92.63%"),
                  ("SB(Sigmoid)", {"use_sb": True, "activation": "sigmoid"}, (0.897, 0.899), "92.66%"),
                  ("SB(Tanh)", {"use_sb": True, "activation": "tanh"}, (0.8951, 0.8971), "92.22%"),
                  ("SB(ReLU)", {"use_sb": True, "activation": "relu"}, (0.893, 0.897), "92.24%"),
                  ("SB(Softmax)", {"use_sb": True, "activation": "softmax"}, None, "92.30%"),
                  ("SB(Linear)", {"use_sb": True, "activation": "linear"}, (0.880,), "92.18%")]


def write_reference_runs(directory: Path) -> None:
    for _, kind, accs, _ in REFERENCE_ROWS:
        for seed, acc in enumerate(accs or ()):
            write_run(directory, [0.5] * 79 + [acc], seed=seed, **kind, **REFERENCE_RECIPE)


def test_the_reference_table_sets_the_published_figures_beside_the_runs(tmp_path):
    write_reference_runs(tmp_path)
    assert cli.run_report(parse("report", [str(tmp_path)])) == 0
    md = (tmp_path / "reference.md").read_text()
    rows = table_rows(md)
    assert [(r[0], r[1]) for r in rows] == [(label, published) for label, _, _, published in REFERENCE_ROWS]
    assert [r[2] for r in rows] == ["89.20 ± 0.28%", "89.70 ± 0.28%", "89.80 ± 0.14%", "89.61 ± 0.14%",
                                    "89.50 ± 0.28%", "—", "88.00% ± n/a"]
    assert [r[3] for r in rows] == ["2", "2", "2", "2", "2", "0", "1"]
    assert [r[4] for r in rows] == ["—", "+0.50", "+0.60", "+0.41", "+0.30", "—", "-1.20"]
    # SE against the baseline: the interval of test_compare_table_statistics_from_synthetic_runs (Welch, 2 dof)
    assert rows[1][5] == "[-0.72, +1.72]" and rows[6][5] == "n/a"
    assert rows[0][6] == "AMD EPYC, float32" and rows[5][6] == "—"
    assert "**SB(Tanh) − SE**: -0.09 pp" in md and "**SB(Sigmoid) − SE**: +0.10 pp" in md
    assert "**SB(Linear) − SE**: -1.70 pp, 95% CI n/a (no interval: a row with one run)" in md
    assert "SB(Softmax) − SE" not in md
    data = json.loads((tmp_path / "reference.json").read_text())
    tanh = data["rows"][3]
    assert tanh["key"] == "sb-tanh" and tanh["published"] == 92.22 and tanh["n"] == 2
    assert tanh["vs_baseline"]["estimate"] == pytest.approx(0.41)
    assert tanh["vs_se"]["estimate"] == pytest.approx(-0.09) and data["rows"][0]["vs_se"] is None
    # the two suites' own tables are written beside it, as before
    assert (tmp_path / "compare.md").exists() and (tmp_path / "ablation.md").exists()


def test_runs_of_another_recipe_get_no_reference_table(tmp_path):
    for kind in ({}, {"use_se": True}):
        write_run(tmp_path, [0.5] * 79 + [0.9], **kind, dataset="cifar10", width=0.5)
    assert cli.run_report(parse("report", [str(tmp_path)])) == 0
    assert (tmp_path / "compare.md").exists() and not (tmp_path / "reference.md").exists()


def test_the_reference_suites_write_the_reference_table_of_both(tmp_path, monkeypatch):
    def train(config: TrainConfig, quiet: bool = False):
        acc = 0.89 + 0.001 * (config.seed or 0) + (0.002 if config.use_sb else 0)
        write_run(Path(config.output_dir), [0.5] * 79 + [acc], use_sb=config.use_sb, use_se=config.use_se,
                  activation=config.activation, seed=config.seed, attention=config.attention, **REFERENCE_RECIPE)
        return SimpleNamespace(exit_code=0)
    monkeypatch.setattr(suites, "train", train)
    common = ["--preset", "reference", "--dataset", "cifar10", "--device", "cpu", "--output-dir", str(tmp_path)]
    assert cli.run_compare(parse("compare", common + ["--seeds", "2"])) == 0
    assert [r[3] for r in table_rows((tmp_path / "reference.md").read_text())] == ["2", "2", "2", "0", "0", "0", "0"]
    assert cli.run_ablate(parse("ablate", common)) == 0  # one seed; Sigmoid's two are the comparison's, reused
    rows = table_rows((tmp_path / "reference.md").read_text())
    assert [r[3] for r in rows] == ["2", "2", "2", "1", "1", "1", "1"]
    assert rows[3][2] == "89.20% ± n/a" and rows[3][4] == "+0.15"


# ---------------------------------------------------------------- options and presets

def test_preset_sets_fields_and_explicit_flags_win():
    args = parse("compare", ["--preset", "quick", "--epochs", "3"])
    c = cli.base_config(args, variants.COMPARE)
    quick = variants.PRESETS["quick"]
    assert c.epochs == 3  # explicit
    assert (c.width, c.milestones, c.batch_size) == (quick["width"], quick["milestones"], quick["batch_size"])
    assert c.activation == "sigmoid" and c.resume is True
    assert c.output_dir == "./results/compare-quick"

    c = cli.base_config(parse("ablate", ["--preset", "seed", "--width", "0.5", "--placement", "layer"]),
                            variants.ABLATION)
    assert (c.epochs, c.batch_size, c.milestones, c.width) == (80, 64, [40, 60, 80], 0.5)
    assert c.output_dir == "./results/ablation-seed-layer" and c.placement == "layer"

    c = cli.base_config(parse("compare", ["--activation", "relu", "--output-dir", "x"]), variants.COMPARE)
    assert (c.activation, c.epochs, c.width, c.output_dir) == ("relu", 80, 1.0, "x")  # no preset: the defaults


def test_a_preset_applies_to_train_as_to_the_suites_and_names_only_options(tmp_path):
    from sbattn.cli.options import config_from_args
    from sbattn.config.presets import preset
    quick = variants.PRESETS["quick"]
    path = tmp_path / "epochs.json"
    path.write_text('{"epochs": 5}')
    args = build_parser().parse_args(["train", "--preset", "quick", "--config", str(path), "--width", "0.5"])
    c = config_from_args(args)
    assert (c.epochs, c.width, c.milestones, c.batch_size) == (5, 0.5, quick["milestones"], quick["batch_size"])
    assert config_from_args(build_parser().parse_args(["train"])).epochs == 80  # none: the defaults
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--preset", "fast"])
    with pytest.raises(ConfigError, match=r"^preset 'x': epoch, job: not an option of train nor of the suites$"):
        preset("x", {"epoch": 3, "job": 2, "width": 0.5})


def test_seeds_and_fixed_flags():
    assert cli.seed_list(parse("compare", ["--seeds", "3"])) == [0, 1, 2]
    assert cli.seed_list(parse("compare", ["--seeds", "2", "--seed", "10"])) == [10, 11]
    with pytest.raises(UserError, match="at least one"):
        cli.seed_list(parse("compare", ["--seeds", "0"]))
    for command, flag in (("compare", "--use_se"), ("ablate", "--activation"), ("compare", "--resume")):
        with pytest.raises(SystemExit):  # the suite sets these itself: passing one is an error, not ignored
            parse(command, [flag, "True"])


def test_the_cli_has_the_suite_commands():
    from sbattn.cli import build_parser
    args = build_parser().parse_args(["compare", "--preset", "quick", "--seeds", "2", "--placement", "layer"])
    assert args.command == "compare" and args.seeds == 2 and args.placement == "layer"
    assert build_parser().parse_args(["report", "some/dir"]).directory == "some/dir"


# ---------------------------------------------------------------- suite logic with a stand-in for train

class FakeTrain:
    """Stands in for train(): writes a finished run's JSON, or returns 130 (interrupted) on chosen calls."""

    def __init__(self, interrupt_on: int | None = None):
        self.configs: list[TrainConfig] = []
        self.interrupt_on = interrupt_on

    def __call__(self, config: TrainConfig, quiet: bool = False):
        self.configs.append(config)
        if len(self.configs) == self.interrupt_on:
            return SimpleNamespace(exit_code=130)
        write_run(Path(config.output_dir), [0.5, 0.9 + 0.001 * len(self.configs)], use_sb=config.use_sb,
                  use_se=config.use_se, activation=config.activation, seed=config.seed, attention=config.attention)
        return SimpleNamespace(exit_code=0)


def test_interrupted_run_stops_the_suite_with_130_and_the_rerun_finishes(tmp_path, monkeypatch):
    fake = FakeTrain(interrupt_on=2)
    monkeypatch.setattr(suites, "train", fake)
    args = parse("compare", ["--dataset", "fake", "--width", "0.0625", "--epochs", "2", "--device", "cpu",
                             "--seeds", "2", "--output-dir", str(tmp_path)])
    assert cli.run_compare(args) == 130
    assert len(fake.configs) == 2  # nothing after the interrupted run
    assert not (tmp_path / "compare.md").exists()

    rerun = FakeTrain()
    monkeypatch.setattr(suites, "train", rerun)
    assert cli.run_compare(args) == 0
    trained = [(c.attention, c.seed) for c in rerun.configs]
    assert trained == [("se", 0), ("sb", 0), ("none", 1), ("se", 1), ("sb", 1)]  # baseline seed 0 was reused
    assert all(c.resume for c in fake.configs + rerun.configs)
    assert [r[2] for r in table_rows((tmp_path / "compare.md").read_text())] == ["2", "2", "2"]


def test_a_finished_run_of_another_recipe_is_not_reused(tmp_path, monkeypatch):
    # trained in fp32: the same run name as the bf16 baseline below (a name tells recipes apart, not precisions)
    write_run(tmp_path, [0.5, 0.6], seed=0, precision="fp32")
    fake = FakeTrain()
    monkeypatch.setattr(suites, "train", fake)
    args = parse("compare", ["--dataset", "fake", "--width", "0.0625", "--epochs", "2", "--device", "cpu",
                             "--precision", "bf16", "--output-dir", str(tmp_path)])
    with pytest.raises(UserError, match="another recipe.*precision 'fp32' there, 'bf16' now"):
        cli.run_compare(args)
    assert fake.configs == []


def test_compare_takes_any_registered_attention_kind(tmp_path, monkeypatch, gate_attention):
    fake = FakeTrain()
    monkeypatch.setattr(suites, "train", fake)
    args = parse("compare", ["--dataset", "fake", "--width", "0.0625", "--epochs", "2", "--device", "cpu",
                             "--attention", "none,gate,sb", "--output-dir", str(tmp_path)])
    assert cli.run_compare(args) == 0
    assert [c.attention for c in fake.configs] == ["none", "gate", "sb"]
    assert [r[0] for r in table_rows((tmp_path / "compare.md").read_text())] == ["baseline", "GATE", "SB(Sigmoid)"]
    with pytest.raises(SystemExit):
        parse("compare", ["--attention", "none,nope"])


# ---------------------------------------------------------------- end to end, tiny real training

class CountingTrain:
    """The real train(), counted; raises (a simulated crash) on call `crash_on`."""

    def __init__(self, crash_on: int | None = None):
        from sbattn.train.loop import train
        self.real, self.crash_on, self.configs = train, crash_on, []

    def __call__(self, config: TrainConfig, quiet: bool = False):
        self.configs.append(config)
        if len(self.configs) == self.crash_on:
            raise RuntimeError("simulated crash")
        return self.real(config, quiet=True)


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("compare")
    counter = CountingTrain()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(suites, "train", counter)
        code = cli.run_compare(parse("compare", TINY + ["--seeds", "2", "--output-dir", str(directory)]))
    return directory, code, counter


def test_compare_end_to_end(compare_dir):
    directory, code, counter = compare_dir
    assert code == 0 and len(counter.configs) == 6
    assert {(c.attention, c.activation, c.seed) for c in counter.configs} == {
        (a, act, s) for a, act in (("none", "tanh"), ("se", "tanh"), ("sb", "sigmoid")) for s in (0, 1)}
    rows = table_rows((directory / "compare.md").read_text())
    assert [r[0] for r in rows] == ["baseline", "SE", "SB(Sigmoid)"]
    assert [r[2] for r in rows] == ["2", "2", "2"]
    assert all(r[4].startswith("[") for r in rows[1:])  # two seeds: a real interval
    params = [int(r[5].replace(",", "")) for r in rows]
    assert params[0] < params[1] and params[0] < params[2]  # attention adds parameters
    data = json.loads((directory / "compare.json").read_text())
    assert [row["n"] for row in data["rows"]] == [2, 2, 2]
    assert len((directory / "compare.csv").read_text().splitlines()) == 4
    assert_png(directory / "compare.png")
    assert_png(directory / "lambda.png")
    assert not list(directory.glob("*.ckpt"))


def test_rerunning_a_finished_suite_trains_nothing(compare_dir, monkeypatch):
    directory, _, _ = compare_dir
    counter = CountingTrain()
    monkeypatch.setattr(suites, "train", counter)
    assert cli.run_compare(parse("compare", TINY + ["--seeds", "2", "--output-dir", str(directory)])) == 0
    assert counter.configs == []


def test_report_reproduces_the_suite_table(compare_dir, tmp_path, monkeypatch):
    directory, _, _ = compare_dir
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("compare.*", "lambda.png"))

    def no_training(*a, **k):
        raise AssertionError("report must not train")
    monkeypatch.setattr(suites, "train", no_training)
    assert cli.run_report(parse("report", [str(copy)])) == 0
    assert (copy / "compare.md").read_text() == (directory / "compare.md").read_text()
    assert (copy / "compare.csv").read_text() == (directory / "compare.csv").read_text()
    assert_png(copy / "compare.png")
    first = sorted(copy.glob("vgg16_*_seed0_*.json"))[0]
    shutil.copy(first, copy / f"{first.stem} (copy).json")  # the same run twice: it must not count as two seeds
    with pytest.raises(UserError, match=rf"holds one run twice: .*{first.stem}( \(copy\))?\.json and .*\(the same "
                                        r"recipe and seed\)"):
        cli.run_report(parse("report", [str(copy)]))


def test_a_crashed_suite_trains_only_what_is_missing(tmp_path, monkeypatch):
    args = parse("compare", TINY + ["--seeds", "1", "--output-dir", str(tmp_path)])
    crashing = CountingTrain(crash_on=2)
    monkeypatch.setattr(suites, "train", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.run_compare(args)
    again = CountingTrain()
    monkeypatch.setattr(suites, "train", again)
    assert cli.run_compare(args) == 0
    assert [c.attention for c in again.configs] == ["se", "sb"]  # the baseline finished before the crash
    assert [r[0] for r in table_rows((tmp_path / "compare.md").read_text())] == ["baseline", "SE", "SB(Sigmoid)"]


def test_ctrl_c_mid_run_then_rerun_resumes_from_the_checkpoint(tmp_path, monkeypatch):
    import sbattn.train.epoch as pipeline_module
    import sbattn.train.state as state_module
    real_batches = pipeline_module.train_batches
    sent = []

    def interrupt_after_first_batch(*args, **kwargs):
        for i, batch in enumerate(real_batches(*args, **kwargs)):
            yield batch
            if not sent:  # Ctrl-C once, in the middle of the first run's first epoch
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(pipeline_module, "train_batches", interrupt_after_first_batch)
    args = parse("ablate", TINY + ["--output-dir", str(tmp_path)])
    first = CountingTrain()
    monkeypatch.setattr(suites, "train", first)
    assert cli.run_ablate(args) == 130
    assert len(first.configs) == 1
    checkpoint = tmp_path / f"{first.configs[0].run_name}.ckpt"
    assert checkpoint.exists()

    loaded = []
    real_load = state_module.load_checkpoint
    monkeypatch.setattr(state_module, "load_checkpoint",
                        lambda path, config: loaded.append(path) or real_load(path, config))
    second = CountingTrain()
    monkeypatch.setattr(suites, "train", second)
    assert cli.run_ablate(args) == 0
    assert loaded == [checkpoint]  # the interrupted run continued from its checkpoint, the others started fresh
    assert [c.activation for c in second.configs] == list(variants.ABLATION_ACTIVATIONS)
    assert not checkpoint.exists()  # resumed and finished
    rows = table_rows((tmp_path / "ablation.md").read_text())
    assert [r[0] for r in rows] == ["Tanh", "Sigmoid", "ReLU", "Softmax", "Linear"]
    assert [r[2] for r in rows] == ["1"] * 5 and rows[1][4] == "n/a"
    assert_png(tmp_path / "ablation.png")
    assert_png(tmp_path / "lambda.png")


# ---------------------------------------------------------------- --jobs K: runs in separate processes

def _final_accs(directory: Path) -> dict[str, float]:
    return {r.name: r.summary["final_eval_acc"] for r in tables.load_finished_runs(directory)}


def test_jobs_trains_in_processes_with_the_same_results(compare_dir, tmp_path, monkeypatch):
    directory, _, _ = compare_dir
    import sbattn.experiments.jobs
    monkeypatch.setattr(suites, "train", lambda *a, **k: pytest.fail("--jobs 2 must not train in this process"))
    monkeypatch.setattr(sbattn.experiments.jobs, "threads_per_job", lambda jobs, device: 1)  # as this session's runs
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    assert cli.run_compare(parse("compare", TINY + ["--seeds", "1", "--jobs", "2",
                                                       "--output-dir", str(tmp_path)])) == 0
    # One thread per process, as in this session: the same runs as in this process, to the bit (the third run in
    # the slot the first to finish freed).
    accs, in_process = _final_accs(tmp_path), _final_accs(directory)
    assert len(accs) == 3 and accs == {name: in_process[name] for name in accs}
    assert [row[0] for row in table_rows((tmp_path / "compare.md").read_text())] == ["baseline", "SE", "SB(Sigmoid)"]
    logs = sorted(tmp_path.glob("*.log"))
    assert len(logs) == 3 and all("final test accuracy" in p.read_text() for p in logs)


def test_jobs_refuses_zero(tmp_path):
    with pytest.raises(UserError, match="--jobs 0"):
        cli.run_compare(parse("compare", TINY + ["--jobs", "0", "--output-dir", str(tmp_path)]))


def test_jobs_reports_a_failed_run_in_one_line(tmp_path, monkeypatch, capsys):
    from sbattn.experiments.jobs import Job, run_jobs
    config = TrainConfig(dataset="cifar10", data_dir=str(tmp_path / "nowhere"), device="cpu", width=0.0625,
                         epochs=1, output_dir=str(tmp_path), seed=0)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    lines = []
    assert run_jobs([Job("only", config), Job("never", config)], 1, lines.append) == 1
    assert len(lines) == 3 and "failed with exit status 1" in lines[1] and "nowhere" in lines[1]
    assert lines[2] == "1 run(s) not started"


class StandInRun:
    """A stand-in for a run's `sbattn train` process: it records its command line and environment, and finishes
    (exit status 0) after a few polls, the later runs sooner, so that slots free up out of order."""

    started: list["StandInRun"] = []

    def __init__(self, argv, env, **kwargs):
        self.argv, self.env, self.signals, self.returncode = argv, env, [], None
        self.options = Path(argv[argv.index("--config") + 1]).read_text()  # the suite removes it when the run ends
        self.polls_left = 6 - len(StandInRun.started)
        self.device = next(a.split("=", 1)[1] for a in argv if a.startswith("--device="))
        self.running_beside = [r.device for r in StandInRun.started if r.returncode is None]
        StandInRun.started.append(self)

    def poll(self):
        self.polls_left -= 1
        if self.polls_left <= 0:
            self.returncode = 0
        return self.returncode

    def send_signal(self, signum):
        self.signals.append(signum)


@pytest.mark.parametrize("gpus", [1, 2])
def test_jobs_on_cuda_share_one_gpu_or_spread_over_several(tmp_path, monkeypatch, gpus):
    import torch
    from sbattn.experiments import jobs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(jobs, "thread_budget", lambda: 16)
    monkeypatch.setattr(jobs.subprocess, "Popen", StandInRun)
    monkeypatch.setattr(jobs.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(StandInRun, "started", [])
    runs = [jobs.Job(f"run {i}", TrainConfig(device="cuda", seed=i, output_dir=str(tmp_path), resume=i % 2 == 0))
            for i in range(5)]
    lines = []
    assert jobs.run_jobs(runs, 3, lines.append) == 0
    started = StandInRun.started
    for r, j in zip(started, runs):  # each from a configuration file of the suite's own, which rebuilds it whole
        resume = ["--resume"] if j.config.resume else []
        options = Path(r.argv[r.argv.index("--config") + 1])
        assert r.argv[r.argv.index("train") + 1:] == ["--config", str(options), *resume, f"--device={r.device}"]
        assert TrainConfig(**{**json.loads(r.options), "resume": j.config.resume}) == j.config
        assert options.parent != tmp_path and not options.exists()  # not the run's own file, and removed at its end
        assert not j.paths.config.exists()  # the run writes that one, under its lock
    assert all(len(r.running_beside) < 3 for r in started)  # three at a time
    assert all(r.env["OMP_NUM_THREADS"] == "4" and not r.signals for r in started)  # 16 cores; no "alone" on a GPU
    if gpus == 1:  # every run on the one GPU, as the user's --device named it
        assert [r.device for r in started] == ["cuda"] * 5
    else:  # each new run on the GPU with the fewest running
        assert [r.device for r in started[:3]] == ["cuda:0", "cuda:1", "cuda:0"]
        for r in started:
            assert r.running_beside.count(r.device) <= min(r.running_beside.count(d) for d in ("cuda:0", "cuda:1"))
        assert " on cuda:1 " in lines[1]


@pytest.mark.skipif(available_cores() < 2, reason="needs two cores to share out")
def test_a_run_left_alone_takes_every_core(tmp_path, monkeypatch):
    from sbattn.experiments.jobs import Job, run_jobs
    config = TrainConfig(dataset="fake", device="cpu", width=0.0625, epochs=1, batch_size=32, precision="fp32",
                         output_dir=str(tmp_path), seed=0)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    lines = []
    # Two slots, one run: it starts on its share, one core, and is at once told it is alone. The signal comes
    # before the run has installed its handler, and must wait for it rather than kill the run.
    assert run_jobs([Job("only", config)], 2, lines.append) == 0, lines
    history = json.loads((tmp_path / f"{config.run_name}.json").read_text())["history"]
    assert history[0]["thread_ceiling"] == available_cores()  # how many it uses depends on what else runs


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_the_alone_signal_sets_threads_inside_the_run_and_is_harmless_after_it():
    import subprocess
    import sys
    # As a suite starts a run: the signal blocked from the start, in every thread.
    script = """if True:
        import os, signal, time
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        import torch
        from sbattn.train import process as jobs
        torch.set_num_threads(1)
        with jobs.alone_signal_handled():
            os.kill(os.getpid(), jobs.ALONE_SIGNAL)
            time.sleep(0.1)
            assert torch.get_num_threads() == 3, torch.get_num_threads()
            torch.set_num_threads(2)  # new threads, as a run's pool grows
            torch.ones(1000, 1000) @ torch.ones(1000, 1000)
        os.kill(os.getpid(), jobs.ALONE_SIGNAL)  # as the run finishes
        time.sleep(0.1)
        print("alive")
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "SBATTN_ALONE_THREADS": "3"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "alive\n", done.stderr


def test_ctrl_c_to_a_jobs_suite_checkpoints_every_run_and_the_rerun_finishes(tmp_path):
    import subprocess
    import sys
    import time
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sbattn", "compare", *TINY, "--epochs", "8", "--jobs", "2",
               "--output-dir", str(tmp_path)]
    suite = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while len(list(tmp_path.glob("*.ckpt"))) < 2:  # both runs past their first epoch
        assert suite.poll() is None and time.time() < deadline, suite.communicate()[0]
        time.sleep(0.05)
    suite.send_signal(signal.SIGINT)  # to the suite alone: it passes the signal on
    output = suite.communicate(timeout=120)[0]
    assert suite.returncode == 130, output
    assert "stopped, checkpoint kept" in output and "1 run(s) not started" in output
    checkpoints = sorted(tmp_path.glob("*.ckpt"))
    assert len(checkpoints) == 2
    for log in tmp_path.glob("*.log"):
        assert "resume with:" in log.read_text()

    rerun = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not list(tmp_path.glob("*.ckpt"))
    for ckpt in checkpoints:  # the interrupted runs went on from their checkpoints
        assert "resuming " in (tmp_path / f"{ckpt.stem}.log").read_text()
    assert [r[2] for r in table_rows((tmp_path / "compare.md").read_text())] == ["1", "1", "1"]


def test_the_users_thread_count_is_the_suites_budget(monkeypatch):
    from sbattn.experiments.jobs import threads_per_job
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_job(1, "cpu") == 1 and threads_per_job(2, "cpu") == 1  # never more than the user allowed
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert threads_per_job(2, "cpu") == 4
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads_per_job(1, "cpu") == available_cores()


def test_a_runs_end_is_reported_from_its_own_output_not_another_suites(tmp_path):
    """Two suites on one folder append to the same `<run>.log`: each reports the last line its own process wrote
    (from where the log ended when it started), never the other's result as its own."""
    from sbattn.experiments.jobs import _last_line
    log = tmp_path / "run.log"
    log.write_text("final test accuracy 20.31% (the other suite's run)\n")
    offset = log.stat().st_size
    assert _last_line(log, offset) == ""
    with open(log, "a") as f:
        f.write("error: finished with another recipe\n\n")
    assert _last_line(log, offset) == "error: finished with another recipe"
    assert _last_line(log) == "error: finished with another recipe" and _last_line(tmp_path / "none.log") == ""


def test_a_report_interrupted_while_drawing_leaves_the_earlier_tables_whole(compare_dir, tmp_path, monkeypatch):
    """The slow figure is drawn before any text is replaced: Ctrl-C (or SIGTERM, which report turns into it) there
    leaves the earlier compare.md, .csv and .json as they were, never a new text beside an old figure."""
    from sbattn.experiments import tables
    directory, _, _ = compare_dir
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    for suffix in (".md", ".csv", ".json"):
        (copy / f"compare{suffix}").write_text("the earlier table\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(tables, "plot_suite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.run_report(parse("report", [str(copy)]))
    assert all((copy / f"compare{s}").read_text() == "the earlier table\n" for s in (".md", ".csv", ".json"))
