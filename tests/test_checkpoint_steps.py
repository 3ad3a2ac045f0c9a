"""--checkpoint-steps: checkpoints inside the epoch, so that a run killed there (no signal, no chance to save) resumes
at the last such step and ends as if never stopped; and the checkpoints themselves change nothing."""
import json
import sys
from pathlib import Path

import pytest
import torch

from sbattn.cli import main
from sbattn.records.checkpoint import read_record
from sbattn.train import loop as start

sys.path.insert(0, str(Path(__file__).parent))
from _runs import TINY, run_name  # noqa: E402

ARGS = [a for a in TINY if not a.startswith(("--epochs", "--milestones"))] + ["--epochs=2", "--milestones=[1]",
                                                                               "--seed=3"]
RUN = run_name(*ARGS, "--attention=se")  # SE: the branch's BatchNorm and the trunk's both in the state
STEPS = 32  # the fake set's 1024 images at batch 32
MAKE_STEP = start.make_step


class Killed(BaseException):
    """A process's sudden end: nothing below catches it, no checkpoint is written on the way out."""


def counting(make_step, calls: list, die_after: int | None = None):
    def make(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def counted(x, y):
            if die_after is not None and len(calls) == die_after:
                raise Killed
            step(x, y)
            calls.append(1)
        return counted
    return make


def train(out: Path, *extra: str) -> int:
    return main(["train", *ARGS, "--attention=se", f"--output-dir={out}", *extra])


def history_of(out: Path) -> list:
    drop = {"seconds", "images_per_sec", "eval_seconds", "threads", "thread_ceiling"}
    history = json.loads((out / f"{RUN}.json").read_text())["history"]
    return [{k: v for k, v in e.items() if k not in drop} for e in history]


def weights_of(out: Path) -> dict:
    return torch.load(out / f"{RUN}.pth", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    assert train(out) == 0
    return out


def test_a_run_killed_mid_epoch_resumes_at_its_last_checkpointed_step(plain, tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(start, "make_step", counting(MAKE_STEP, calls, die_after=STEPS + 13))
    with pytest.raises(Killed):
        train(tmp_path, "--checkpoint-steps=5")
    ckpt = read_record(tmp_path / f"{RUN}.ckpt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 10)  # epoch 2's step 10: the last multiple of 5 before the kill
    resumed: list = []
    monkeypatch.setattr(start, "make_step", counting(MAKE_STEP, resumed))
    capsys.readouterr()
    assert train(tmp_path, "--resume", "--checkpoint-steps=5") == 0
    assert "at epoch 2, step 10" in capsys.readouterr().out
    assert len(resumed) == STEPS - 10  # only the steps after the checkpoint were trained again
    assert history_of(tmp_path) == history_of(plain)
    a, b = weights_of(tmp_path), weights_of(plain)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_checkpoints_inside_the_epoch_change_nothing(plain, tmp_path):
    assert train(tmp_path, "--checkpoint-steps=3") == 0
    assert history_of(tmp_path) == history_of(plain)
    a, b = weights_of(tmp_path), weights_of(plain)
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_step_count_that_is_no_count_is_one_line(value, tmp_path, capsys):
    try:
        code = train(tmp_path, f"--checkpoint-steps={value}")
    except SystemExit as e:  # argparse's own one line, for what is no integer
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint" in err and list(tmp_path.iterdir()) == []


def test_random_states_restore_where_the_checkpoint_has_cuda_states_and_where_it_has_none(monkeypatch):
    """A checkpoint written on a CPU resumes on a GPU machine (no CUDA states to restore), and one written on a
    GPU restores its CUDA states where CUDA is."""
    from sbattn.train import state as state_module
    restored: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    generator = torch.Generator()
    cpu_made = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    state_module._set_rng_state(cpu_made, generator)
    assert restored == []
    state_module._set_rng_state({**cpu_made, "cuda": ["the GPU's states"]}, generator)
    assert restored == [["the GPU's states"]]
