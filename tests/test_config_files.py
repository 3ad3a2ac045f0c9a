"""--config FILE and the values it holds: only a regular file of bounded size (or standard input, named), every bad
value one line and exit status 2, never a traceback or a hang; and a suite of many seeds planned at once.

Where a regression would start a training (a value the file should have refused), the test calls the reader
itself rather than the command line.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import sys
from types import SimpleNamespace

import pytest

from sbattn import ConfigError, TrainConfig
from sbattn.cli import main
from sbattn.config.file import MAX_CONFIG_BYTES, read_config_file
from sbattn.cli.options import file_options
from sbattn.config.recipe import MAX_SEED, Recipe
from sbattn.errors import UserError

TINY = ["--device=cpu", "--dataset=fake", "--epochs=1", "--width=0.0625"]


@contextlib.contextmanager
def deadline(seconds: float):
    """A TimeoutError after `seconds`: a regression hangs the test no longer than that."""
    def expire(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_cap(extra: int = 256 * 2**20):
    """This process's address space capped at what it maps now plus `extra`: a regression that reads a device whole
    ends in MemoryError at once instead of taking the machine's memory."""
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refused(argv: list[str], capsys, *words: str) -> str:
    """`sbattn argv` exits 2 with one line holding `words`."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sbattn {argv[0]}: error:"), err[:500]
    assert all(w in err for w in words), err[:500]
    return err


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- 1. only a regular file, of bounded size

def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path, capsys):
    fifo = tmp_path / "options.json"
    os.mkfifo(fifo)
    with deadline(10):
        refused(["train", "--config", str(fifo), *TINY], capsys, "a FIFO, not a regular file")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_is_refused_before_it_is_read(device, capsys):
    with deadline(20), memory_cap():
        refused(["train", "--config", device, *TINY], capsys, f"--config {device}: a device, not a regular file")


def test_a_file_over_a_megabyte_is_refused(tmp_path):
    path = write(tmp_path / "big.json", " " * MAX_CONFIG_BYTES + "{}")
    with pytest.raises(ConfigError, match=f"more than the {MAX_CONFIG_BYTES:,}"):
        read_config_file(path)
    assert read_config_file(write(tmp_path / "edge.json", " " * (MAX_CONFIG_BYTES - 2) + "{}")) == {}


@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_standard_input_when_named_and_bounded(name, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"epochs": 3, "data-dir": "d"}')))
    assert read_config_file(name) == {"epochs": 3, "data_dir": "d"}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b" " * MAX_CONFIG_BYTES + b"{}")))
    with pytest.raises(ConfigError, match="standard input holds more than"):
        read_config_file(name)
    monkeypatch.setattr(sys, "stdin", None)  # started with it closed
    with pytest.raises(ConfigError, match=f"^--config {name}: standard input is closed: give a file"):
        read_config_file(name)


# ---------------------------------------------------------------- 2. values no option takes: one line, exit 2

@pytest.mark.parametrize("name, text, words", [
    ("run.toml", "seed = 1979-05-27T07:32:00Z\n", "seed = datetime.datetime(1979, 5, 27"),
    ("run.toml", "epochs = 07:32:00\n", "a TOML date or time"),
    ("run.toml", "milestones = [1979-05-27]\n", "milestones = [datetime.date(1979, 5, 27)]"),
    ("run.json", '{"epochs": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ("run.toml", "milestones = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    ("run.json", '{"milestones": [[1]]}', "expected a list of integers like [40,60,80], got '[[1]]'"),
])
def test_dates_and_deep_nesting_are_one_line(tmp_path, capsys, name, text, words):
    refused(["train", "--config", write(tmp_path / name, text), *TINY], capsys, words)


def test_a_nul_in_the_output_folder_is_one_line(tmp_path, capsys):
    path = write(tmp_path / "run.json", json.dumps({"output_dir": f"{tmp_path / 'out'}\0x"}))
    refused(["train", "--config", path, *TINY], capsys, "output_dir=", "\\x00", "control character")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 3. an option set twice

@pytest.mark.parametrize("text, words", [
    ('{"epochs": 1, "epochs": 1000000}', "'epochs' is set twice"),
    ('{"summary": {"config": {"epochs": 1, "epochs": 2}}}', "'epochs' is set twice"),
    ('{"data_dir": "a", "data-dir": "b"}', "data_dir set twice, in both spellings"),
])
def test_an_option_set_twice_in_json_is_refused(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words):
        file_options(write(tmp_path / "run.json", text))


# ---------------------------------------------------------------- 4. control characters in folder names

@pytest.mark.parametrize("character", ["\n", "\x1b", "\0", "\x7f", "\u202e"])  # U+202E: shown text reversed
@pytest.mark.parametrize("name", ["output_dir", "data_dir", "cache_dir"])
def test_a_control_character_in_a_folder_is_refused_naming_the_option(tmp_path, name, character):
    value = f"{tmp_path}/a{character}b"
    with pytest.raises(ConfigError) as e:
        TrainConfig(device="cpu", **{name: value})
    assert str(e.value).startswith(f"{name}={value!r}: holds a control character")


def test_folders_without_control_characters_pass(tmp_path):
    c = TrainConfig(device="cpu", output_dir=f"{tmp_path}/résultats été", data_dir="./data", cache_dir=None)
    assert c.output_dir.endswith("résultats été")


# ---------------------------------------------------------------- 5. a long value echoed clipped

def test_a_long_value_is_echoed_clipped_with_its_length():
    with pytest.raises(ConfigError) as e:
        TrainConfig(device="cpu", activation="x" * 20_000_000)
    assert len(str(e.value)) < 400 and "... (20,000,002 characters)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        TrainConfig(device="x" * 100_000)
    assert len(str(e.value)) < 400 and str(e.value).startswith("device='xxx")


@pytest.mark.parametrize("values", [{"use_sb": "x" * 100_000}, {"init_lr": "x" * 100_000},
                                    {"milestones": ["x" * 100_000]}, {"width": [1] * 100_000},
                                    {"x" * 100_000: 1}])
def test_a_long_value_in_a_file_is_echoed_clipped(tmp_path, values):
    with pytest.raises(ConfigError) as e:
        file_options(write(tmp_path / "run.json", json.dumps(values)))
    assert len(str(e.value)) < 1000 and "characters)" in str(e.value)


# ---------------------------------------------------------------- 6. a suite's size, planned at once

def suite_args(*argv: str):
    from sbattn.cli import build_parser
    return build_parser().parse_args(["compare", *argv])


def test_seeds_and_jobs_are_bounded(tmp_path, monkeypatch):
    from sbattn.cli.suites import run_compare, seed_list
    from sbattn.experiments import suites
    assert len(seed_list(suite_args("--seeds", "1000"))) == 1000
    with pytest.raises(UserError, match="--seeds 1001: at most 1000") as e:
        seed_list(suite_args("--seeds", "1001"))
    assert e.value.code == 2
    monkeypatch.setattr(suites, "available_cores", lambda: 2)
    with pytest.raises(UserError, match=r"--jobs 9: at most 8 \(4 per core") as e:
        run_compare(suite_args(*TINY, "--jobs", "9", f"--output-dir={tmp_path / 'out'}"))
    assert e.value.code == 2 and not (tmp_path / "out").exists()
    base = TrainConfig(device="cpu", dataset="fake", output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="--seeds 1001"):
        suites.run_suite(suites.SuiteRequest(suites.COMPARE, base, [], range(1001), 1))


def test_a_suite_validates_each_variant_once_and_says_its_plan_before_training(tmp_path, monkeypatch):
    from sbattn.experiments import suites, variants
    base = suites.suite_config(suites.COMPARE, None, {"device": "cpu", "dataset": "fake", "width": 0.0625,
                                                      "output_dir": str(tmp_path)})
    built, said = [], []
    model_check = Recipe._validate_model_size
    monkeypatch.setattr(Recipe, "_validate_model_size", lambda self: built.append(1) or model_check(self))
    monkeypatch.setattr(suites, "train", lambda config: said.extend(lines) or SimpleNamespace(exit_code=130))
    lines: list[str] = []
    kinds = variants.compare_variants(("none", "se", "sb"), "sigmoid")
    assert suites.run_suite(suites.SuiteRequest(suites.COMPARE, base, kinds, range(100), 1), log=lines.append) == 130
    assert len(built) == 3  # one per variant, not one per run
    assert said[0] == f"compare: 300 run(s), 3 configuration(s) x 100 seed(s), in {tmp_path}"
    assert said[1] == "compare: 0 finished earlier, 300 to train"


def test_the_plan_estimates_the_time_left_from_the_finished_runs(tmp_path, monkeypatch):
    from sbattn.experiments import suites, variants
    from sbattn.records import FinishedRun
    base = suites.suite_config(suites.COMPARE, None, {"device": "cpu", "dataset": "fake", "width": 0.0625,
                                                      "output_dir": str(tmp_path)})
    took = {"none": 600.0, "se": 1200.0}  # seed 0 of these two finished; SB none yet: it takes their mean, 900 s

    def finished(config):
        if config.seed == 0 and config.attention in took:
            return FinishedRun(config.run_name, {}, {"train_seconds": took[config.attention]}, [])
    monkeypatch.setattr(suites, "finished_run", finished)
    monkeypatch.setattr(suites, "_train_missing", lambda missing, jobs, scheme, log: 130)
    lines: list[str] = []
    kinds = variants.compare_variants(("none", "se", "sb"), "sigmoid")
    suites.run_suite(suites.SuiteRequest(suites.COMPARE, base, kinds, range(3), 1), log=lines.append)
    assert lines[-2] == "compare: 2 finished earlier, 7 to train; about 1 h 45 min at the pace of the 2 finished"
    suites.run_suite(suites.SuiteRequest(suites.COMPARE, base, kinds, range(3), 2), log=lines.append)
    assert lines[-2].endswith("7 to train, 2 at a time; about 53 min at the pace of the 2 finished")


def test_a_suites_seeds_are_checked_without_validating_each_run(tmp_path):
    from sbattn.experiments import suites, variants
    base = TrainConfig(device="cpu", dataset="fake", width=0.0625, output_dir=str(tmp_path))
    kinds = variants.compare_variants(("none",), "tanh")
    with pytest.raises(ConfigError, match=f"seed={MAX_SEED + 1}: must be an integer from 0"):
        suites.run_suite(suites.SuiteRequest(suites.COMPARE, base, kinds, [MAX_SEED - 1, MAX_SEED, MAX_SEED + 1], 1))
    config = base.with_seed(7)
    assert config.seed == 7 and base.seed is None and config.milestones == base.milestones
    assert config.milestones is not base.milestones


def test_every_folder_option_expands_the_home_folder_alike(tmp_path, monkeypatch):
    """`~` in --data-dir, --cache-dir, --output-dir (a config file's too) is the home folder; `~user` of a user the
    machine lacks is one line, for the options and for SBATTN_CACHE."""
    from sbattn.config import TrainConfig
    from sbattn.data.cifar10 import default_cache_dir
    from sbattn.errors import DataError
    monkeypatch.setenv("HOME", str(tmp_path))
    config = TrainConfig(output_dir="~/runs", data_dir="~/data", cache_dir="~/cache", device="cpu")
    assert (config.output_dir, config.data_dir, config.cache_dir) == tuple(str(tmp_path / d)
                                                                         for d in ("runs", "data", "cache"))
    for name in ("output_dir", "data_dir", "cache_dir"):
        with pytest.raises(ConfigError, match=rf"^{name}='~nosuchuser/x': begins with the home folder of a user"):
            TrainConfig(**{name: "~nosuchuser/x"}, device="cpu")
    monkeypatch.setenv("SBATTN_CACHE", "~nosuchuser/c")
    with pytest.raises(DataError, match="SBATTN_CACHE='~nosuchuser/c' begins with a home folder"):
        default_cache_dir()
