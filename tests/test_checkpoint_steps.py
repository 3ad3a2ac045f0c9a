"""--checkpoint-steps: checkpoints inside the epoch, so that a run killed there (no signal, no chance to save) resumes
at the last such step and ends as if never stopped; and the checkpoints themselves change nothing."""
import json
import sys
from pathlib import Path

import pytest
import torch

from sbattn.cli import main
from sbattn.records.checkpoint import read_record, save_checkpoint
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


def killed_at(monkeypatch, out: Path, step: int, *extra: str) -> None:
    """A run with a checkpoint every 5 steps, killed (no checkpoint on the way out) before its `step`-th step."""
    monkeypatch.setattr(start, "make_step", counting(MAKE_STEP, [], die_after=step))
    with pytest.raises(Killed):
        train(out, "--checkpoint-steps=5", *extra)
    monkeypatch.setattr(start, "make_step", MAKE_STEP)


def as_if_written_by(ckpt: Path, processes: int) -> None:
    """The checkpoint rewritten as `processes` processes would have written it (each rank's random state)."""
    record = {k: v for k, v in read_record(ckpt).items() if k not in ("format", "checksum")}
    save_checkpoint(ckpt, {**record, "world_size": processes, "rng": record["rng"] * processes})


@pytest.mark.parametrize("kill, kept_end", [(STEPS + 13, True), (13, False), (STEPS + 13, None)],
                         ids=["inside-epoch-2", "inside-epoch-1", "epoch-end-gone"])
def test_a_checkpoint_inside_an_epoch_by_another_number_of_processes_goes_on_from_the_epoch_before(
        plain, tmp_path, monkeypatch, capsys, kill, kept_end):
    """A checkpoint inside an epoch holds each rank's place in it: a run resumed by another number of processes (a
    node of an elastic job joined or left) goes on from the end of the epoch before, whose checkpoint is kept aside
    (<run>.ckpt.epoch-end) while those inside the next epoch replace the run's; inside epoch 1, from the beginning.
    Here one process resumes what two wrote, and ends as the run never stopped; without the kept file, one line."""
    killed_at(monkeypatch, tmp_path, kill)
    ckpt, kept = tmp_path / f"{RUN}.ckpt", tmp_path / f"{RUN}.ckpt.epoch-end"
    assert kept.exists() == (kill > STEPS)
    if kept_end:
        assert (read_record(kept)["epoch"], read_record(kept)["step"]) == (1, 0)  # epoch 1's end
    elif kept_end is None:
        kept.unlink()
    as_if_written_by(ckpt, 2)
    before = ckpt.read_bytes()
    resumed: list = []
    monkeypatch.setattr(start, "make_step", counting(MAKE_STEP, resumed))
    capsys.readouterr()
    code = train(tmp_path, "--resume", "--checkpoint-steps=5")
    out, err = capsys.readouterr()
    inside = f"{ckpt} was written inside epoch {1 + kill // STEPS} by 2 process(es), not 1"
    if kept_end is None:
        assert code == 2 and err.count("\n") == 1 and inside in err and "(torchrun --nproc_per_node)" in err, err
        assert f"the checkpoint of epoch 1's end is not beside it ({kept})" in err and ckpt.read_bytes() == before
        return
    assert code == 0
    if kept_end:
        assert f"{inside}: going on from the end of epoch 1 ({kept})" in out and len(resumed) == STEPS
    else:
        assert f"{inside}: starting from the beginning (no epoch had ended)" in out and len(resumed) == 2 * STEPS
    assert history_of(tmp_path) == history_of(plain)
    a, b = weights_of(tmp_path), weights_of(plain)
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not kept.exists() and not ckpt.exists()


def test_a_torchrun_worker_continues_a_checkpointed_run_by_itself_and_overwrite_moves_aside_only_another_jobs(
        plain, tmp_path, monkeypatch, capsys):
    """torchrun's agent starts its workers' command again when a node joins or leaves (no restart to torchrun): a
    worker continues the run whenever its checkpoint exists, without --resume, and --overwrite as first given does
    not move aside the job's own run; a checkpoint of another job (TORCHELASTIC_RUN_ID) it does move aside."""
    from sbattn.records import provenance
    job = ["job-a"]
    monkeypatch.setattr(provenance, "torchrun_job", lambda: job[0])
    killed_at(monkeypatch, tmp_path, STEPS + 13, "--overwrite")
    capsys.readouterr()
    assert train(tmp_path, "--checkpoint-steps=5", "--overwrite") == 0  # the same job, a new round
    out = capsys.readouterr().out
    assert "torchrun started the workers: continuing from the last checkpoint" in out and "epoch 2, step 10" in out
    assert not (tmp_path / "replaced").exists() and history_of(tmp_path) == history_of(plain)

    other = tmp_path / "other"
    killed_at(monkeypatch, other, STEPS + 13)
    job[0] = "job-b"
    killed_at(monkeypatch, other, 7, "--overwrite")  # another job: the old run moved aside, a new one started
    assert len(list((other / "replaced").iterdir())) == 1 and read_record(other / f"{RUN}.ckpt")["epoch"] == 0
    job[0] = "job-c"
    capsys.readouterr()
    assert train(other, "--checkpoint-steps=5") == 0  # another job, no flag: it continues
    assert "at epoch 1, step 5" in capsys.readouterr().out and history_of(other) == history_of(plain)


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
