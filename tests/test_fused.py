"""--pack fused (train/pack.py): the seeds of one model stepped as one batched model are each the run a lone
`sbattn train` makes, up to the order of floating-point sums in the batched kernels: within 1e-5 relative (the
batched convolution is a grouped one, which sums in another order than three separate ones). At a learning rate of
0.01 and 8 steps: training amplifies rounding (at 0.1 and 16 steps the first step's 1e-7 grew to 1e-3 here), and
the test is of the maths, not of chaos."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from sbattn.cli import main
from sbattn.train import pack as fused

SHARED = ["--attention=sb", "--activation=tanh", "--device=cpu", "--dataset=fake", "--width=0.125",
          "--batch_size=256", "--precision=fp32", "--epochs=2", "--milestones=[1]", "--init_lr=0.01", "--eval-batch-size=256"]
SEEDS = (0, 1, 2)
TOLERANCE = 1e-5
FIGURES = ("train_loss", "train_acc", "eval_loss", "eval_acc", "lr")


def runs(out: Path) -> dict[str, tuple[list[dict], dict]]:
    found = {}
    for record in sorted(out.glob("vgg16_*.json")):
        history = json.loads(record.read_text())["history"]
        weights = torch.load(record.with_suffix(".pth"), weights_only=True)["state_dict"]
        found[record.stem] = ([{k: h[k] for k in FIGURES} for h in history], weights)
    return found


def worst(a: tuple[list[dict], dict], b: tuple[list[dict], dict]) -> float:
    """The larger relative difference between two runs: of any figure of their histories, or of their weights as
    one vector (the norm of the difference over the norm). Not tensor by tensor: a BatchNorm bias's gradient sums
    terms that nearly cancel, so small tensors differ in their own scale far more than the model does."""
    figures = [abs(x[k] - y[k]) / max(abs(y[k]), 1e-12) for x, y in zip(a[0], b[0]) for k in FIGURES]
    names = [k for k, v in b[1].items() if v.is_floating_point()]
    difference = torch.cat([(a[1][k].double() - b[1][k].double()).flatten() for k in names])
    scale = torch.cat([b[1][k].double().flatten() for k in names])
    return max(figures + [(difference.norm() / scale.norm()).item()])


@pytest.fixture(scope="module")
def together(tmp_path_factory) -> tuple[Path, list[int]]:
    out = tmp_path_factory.mktemp("fused")
    flushes: list[int] = []
    original = fused.FusedGroup.flush

    def counted(self):
        original(self)
        flushes.append(self.fused_steps)
    fused.FusedGroup.flush = counted
    try:
        assert main(["compare", "--attention=sb", *SHARED[1:], f"--seeds={len(SEEDS)}", "--pack=fused", "--jobs=3",
                     f"--output-dir={out}"]) == 0
    finally:
        fused.FusedGroup.flush = original
    return out, flushes


def test_fused_seeds_equal_each_seed_trained_alone(together, tmp_path):
    out, flushes = together
    fused_runs = runs(out)
    assert len(fused_runs) == len(SEEDS)
    assert max(flushes) == 8  # both epochs' 4 steps, every one of them batched over the three runs
    for seed in SEEDS:
        assert main(["train", *SHARED, f"--seed={seed}", f"--output-dir={tmp_path / 'alone'}"]) == 0
    alone = runs(tmp_path / "alone")
    assert alone.keys() == fused_runs.keys()
    for name in alone:
        assert worst(fused_runs[name], alone[name]) < TOLERANCE, name
    # Another seed's run, or one whose learning rate differs by 1%, is told apart: the comparison can fail.
    names = sorted(alone)
    assert worst(fused_runs[names[0]], alone[names[1]]) > 100 * TOLERANCE
    assert main(["train", *SHARED, "--seed=1", "--init_lr=0.0101", f"--output-dir={tmp_path / 'other'}"]) == 0
    (other,) = runs(tmp_path / "other").values()  # under a name of its own: its recipe differs
    assert worst(fused_runs[next(n for n in names if "_seed1_" in n)], other) > 10 * TOLERANCE


def test_fusion_refuses_what_it_cannot_step_in_one_line(tmp_path, capsys):
    code = main(["compare", "--attention=sb", *SHARED[1:], "--seeds=2", "--pack=fused", "--jobs=2",
                 "--compile=model", f"--output-dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "fused runs step eagerly" in err and "Traceback" not in err


SUITE = ["--attention=none,sb", *SHARED[1:], "--width=0.0625", "--seeds=2", "--pack=fused", "--jobs=2"]


def test_a_suite_fuses_the_seeds_of_each_model(tmp_path, monkeypatch):
    # A suite plans its runs seed by seed, one of each model; two at a time in that order would be two different
    # models, and nothing would fuse.
    batched: list[int] = []
    original = fused._fused_step
    monkeypatch.setattr(fused, "_fused_step", lambda pending: (batched.append(len(pending)), original(pending)))
    assert main(["compare", *SUITE, f"--output-dir={tmp_path}"]) == 0
    assert batched == [2] * 16  # each model's 8 steps, its two seeds stepped as one


def test_a_failed_fused_step_stops_the_others_checkpointed_and_keeps_its_runs_last_checkpoint(tmp_path, monkeypatch):
    from sbattn.records.checkpoint import read_record
    from sbattn.nn import ShiftBalance
    calls: list[int] = []
    original = fused._fused_step

    def failing(pending):
        is_sb = any(isinstance(m, ShiftBalance) for m in pending[0][0].model.modules())
        calls.append(is_sb)
        if is_sb and calls.count(True) == 6:  # the SB runs' step 2 of epoch 2
            raise RuntimeError("CUDA out of memory (stand-in)")
        original(pending)
    monkeypatch.setattr(fused, "_fused_step", failing)
    suite = [s.replace("--jobs=2", "--jobs=4") for s in SUITE]
    with pytest.raises(RuntimeError, match="stand-in"):
        main(["compare", *suite, f"--output-dir={tmp_path}"])
    steps = {p.stem.split("_")[2] + re.search(r"_seed(\d+)", p.stem)[1]:
             (read_record(p)["epoch"], read_record(p)["step"]) for p in tmp_path.glob("*.ckpt")}
    # the baseline's runs at the step where they were stopped; the SB runs at their last checkpoint, the end of
    # epoch 1: the step they handed over was never taken
    assert steps == {"False0": (1, 2), "False1": (1, 2), "True0": (1, 0), "True1": (1, 0)}
    monkeypatch.setattr(fused, "_fused_step", original)
    assert main(["compare", *suite, f"--output-dir={tmp_path}"]) == 0
    assert main(["compare", *suite, f"--output-dir={tmp_path / 'whole'}"]) == 0
    resumed, whole = runs(tmp_path), runs(tmp_path / "whole")
    assert resumed.keys() == whole.keys() and len(whole) == 4
    for name in whole:
        assert worst(resumed[name], whole[name]) == 0.0, name
