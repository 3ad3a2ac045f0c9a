"""Several runs stepped in turn by one process (--pack stream, train/pack.py) are each the run a lone `sbattn train`
process makes: the same history and the same weights, bit for bit; one Ctrl-C checkpoints every run, and the same
command finishes them as if never stopped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sbattn.cli import main
from sbattn.errors import UserError
from sbattn.train.pack import train_together

sys.path.insert(0, str(Path(__file__).parent))
from _runs import ctrl_c_at_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ["--activation=tanh", "--device=cpu", "--dataset=fake", "--width=0.125", "--batch_size=64",
          "--precision=fp32", "--epochs=2", "--milestones=[1]", "--eval-batch-size=256", "--seed=4"]
KINDS = ("none", "se", "sb")
SUITE = ["compare", f"--attention={','.join(KINDS)}", *SHARED]
TIMING = {"seconds", "images_per_sec", "eval_seconds"}


def runs(out: Path) -> dict[str, tuple[list[dict], dict]]:
    """Each finished run in `out`: its history without timings, and its weights."""
    found = {}
    for record in sorted(out.glob("vgg16_*.json")):
        history = json.loads(record.read_text())["history"]
        weights = torch.load(record.with_suffix(".pth"), weights_only=True)["state_dict"]
        found[record.stem] = ([{k: v for k, v in h.items() if k not in TIMING} for h in history], weights)
    return found


def same(a: tuple[list[dict], dict], b: tuple[list[dict], dict]) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def lone(attention: str, out: Path, *flags: str) -> None:
    """The suite's run of `attention`, from the same flags, as its own `sbattn train` process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "sbattn", "train", *SHARED, f"--attention={attention}",
                    f"--output-dir={out}", *flags], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed")
    assert main([*SUITE, "--pack=stream", "--jobs=3", f"--output-dir={out}"]) == 0
    return out


def test_runs_stepped_in_turn_equal_each_run_trained_alone(packed, tmp_path):
    together = runs(packed)
    assert len(together) == 3 and len({json.dumps(h) for h, _ in together.values()}) == 3
    for attention in KINDS:
        lone(attention, tmp_path / "alone")
    alone = runs(tmp_path / "alone")
    assert alone.keys() == together.keys()
    for name in together:
        assert same(together[name], alone[name]), name
    # The comparison sees a run that differs in its learning rate alone: a pack that mixed runs up would fail it.
    lone("se", tmp_path / "other", "--init_lr=0.1001")
    (other,) = runs(tmp_path / "other").values()  # under a name of its own: its recipe differs
    assert not same(together[next(n for n in together if "_False_True_" in n)], other)


def test_one_ctrl_c_checkpoints_every_run_and_the_same_command_finishes_them(packed, tmp_path, monkeypatch):
    import sbattn.train.loop as start
    out = tmp_path / "stopped"
    # After the 60th step of the three: each run's 20th, inside epoch 2 (16 steps an epoch).
    monkeypatch.setattr(start, "make_step", ctrl_c_at_step(start.make_step, 60, across_runs=True))
    assert main([*SUITE, "--pack=stream", "--jobs=3", f"--output-dir={out}"]) == 130
    checkpoints = sorted(out.glob("*.ckpt"))
    assert len(checkpoints) == 3 and not list(out.glob("*seed4.json"))  # none finished
    assert {torch.load(c, weights_only=True)["step"] for c in checkpoints} == {4}  # each at its step's end
    monkeypatch.undo()
    assert main([*SUITE, "--pack=stream", "--jobs=3", f"--output-dir={out}"]) == 0
    resumed, whole = runs(out), runs(packed)
    assert resumed.keys() == whole.keys() and all(same(resumed[n], whole[n]) for n in whole)


def test_a_pack_refuses_what_cannot_share_a_process(tmp_path):
    from sbattn.config import TrainConfig
    base = dict(device="cpu", dataset="fake", width=0.0625, precision="fp32", epochs=1, milestones=[1],
                output_dir=str(tmp_path))
    with pytest.raises(UserError, match="--rng reference draws from the process's one global generator"):
        train_together([TrainConfig(**base, seed=0, rng="reference"), TrainConfig(**base, seed=1)])
    assert not any(tmp_path.iterdir())
