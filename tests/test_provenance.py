"""Provenance: what produced a run, in its JSON, its checkpoint and its weights, across a resume."""
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sbattn.train.loop as loop
from sbattn import TrainConfig
from sbattn.records import provenance
from sbattn.train.loop import train
from sbattn.system import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(device="cpu", dataset="fake", width=0.0625, batch_size=32, precision="fp32", epochs=2,
                  milestones=[1], seed=0, output_dir=str(tmp_path), eval_batch_size=256)
    return TrainConfig(**{**values, **overrides})


def checkout_commit() -> str | None:
    """HEAD of the checkout the tests run from, when they do run from one."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT / "sbattn"), "rev-parse", "HEAD"], capture_output=True,
                              text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def assert_this_process(record: dict) -> None:
    assert record["sbattn"] == sys.modules["sbattn"].__version__
    assert record["commit"] == checkout_commit()
    assert record["torch"] == torch.__version__ and record["python"] == platform.python_version()
    assert record["device"] == "cpu" and record["device_name"] == cpu_model() and record["device_name"]
    assert record["command"] == shlex.join(sys.orig_argv)
    assert record["started"][:4].isdigit()


def test_a_resumed_run_records_every_session_in_its_checkpoint_and_json(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    with monkeypatch.context() as m:  # a crash after the last checkpoint, before the run's files
        m.setattr(loop, "_finish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train(config, quiet=True)
    ckpt = torch.load(tmp_path / f"{config.run_name}.ckpt", weights_only=True)
    assert len(ckpt["provenance"]) == 1
    assert_this_process(ckpt["provenance"][0])

    result = train(TrainConfig.from_dict(config.to_dict(), resume=True), quiet=True)
    summary = json.loads(result.paths.summary.read_text())["summary"]
    assert_this_process(summary["provenance"])
    assert summary["provenance"]["finished"] == summary["finished"]
    assert summary["earlier_sessions"] == ckpt["provenance"]
    weights = torch.load(result.paths.with_suffix(".pth"), weights_only=True)
    assert weights["summary"]["provenance"] == summary["provenance"]


def test_no_commit_outside_a_checkout_and_without_git(tmp_path, monkeypatch):
    assert provenance.git_commit(tmp_path) is None  # not a git checkout

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(subprocess, "run", no_git)
    assert provenance.git_commit() is None
    assert provenance.collect(torch.device("cpu"))["commit"] is None
