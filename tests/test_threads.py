"""The thread governor: a CPU run uses the cores other processes leave it, never more than its ceiling."""
import time

import pytest
import torch

import sbattn.train.process as threads


class Machine:
    """A stand-in for /proc/stat and os.times(): core-seconds used by everyone, and by this process."""

    def __init__(self):
        self.busy = self.own = 0.0

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds


@pytest.fixture
def machine(monkeypatch):
    m = Machine()
    monkeypatch.setattr(threads, "_cores", lambda: {0, 1})
    monkeypatch.setattr(threads, "_busy_core_seconds", lambda cores: m.busy)
    monkeypatch.setattr(threads, "_own_core_seconds", lambda: m.own)
    monkeypatch.setattr(threads, "_ceiling", None)
    monkeypatch.setattr(threads, "_pinned", False)
    before = torch.get_num_threads()
    yield m
    torch.set_num_threads(before)


def test_threads_follow_the_free_cores_up_to_the_ceiling(machine):
    torch.set_num_threads(2)  # the run's own setting (OMP_NUM_THREADS or torch.set_num_threads): the ceiling
    governor = threads.ThreadGovernor(torch.device("cpu"), interval=2.0)
    machine.run(2.0, own_cores=1.33, other_cores=0.67)  # a busy process beside two spinning threads
    governor.poll(governor._mark[0] + 1.0)  # too soon: nothing changes
    assert torch.get_num_threads() == 2
    governor.poll(governor._mark[0] + 2.0)
    assert torch.get_num_threads() == 1
    machine.run(2.0, own_cores=1.0, other_cores=1.0)  # still there
    governor.poll(governor._mark[0] + 2.0)
    assert torch.get_num_threads() == 1
    machine.run(2.0, own_cores=1.0, other_cores=0.1)  # gone
    governor.poll(governor._mark[0] + 2.0)
    assert torch.get_num_threads() == 2


def test_the_users_thread_count_is_a_ceiling(machine):
    torch.set_num_threads(1)
    governor = threads.ThreadGovernor(torch.device("cpu"))
    machine.run(2.0, own_cores=1.0, other_cores=0.0)  # a free core, but the user asked for one thread
    governor.poll(governor._mark[0] + 2.0)
    assert torch.get_num_threads() == 1
    threads.set_ceiling(2)  # a suite hands its last run every core
    machine.run(2.0, own_cores=2.0, other_cores=0.0)
    governor.poll(governor._mark[0] + 2.0)
    assert torch.get_num_threads() == 2


def test_inert_off_the_cpu(machine):
    torch.set_num_threads(2)
    governor = threads.ThreadGovernor(torch.device("meta"))
    machine.run(2.0, own_cores=0.5, other_cores=2.0)
    governor.poll(1e9)
    assert torch.get_num_threads() == 2


def test_proc_stat_is_read_for_our_cores_only():
    busy = threads._busy_core_seconds(threads._cores())
    if busy is None:
        pytest.skip("no /proc/stat on this platform")
    assert busy > 0 and threads._busy_core_seconds(set()) == 0


@pytest.mark.parametrize("setting, reference, pinned", [("auto", False, None), ("auto", True, 2), ("1", False, 1),
                                                        ("1", True, 1)])
def test_a_pinned_count_holds_for_the_whole_run(machine, setting, reference, pinned):
    """--threads N pins N; the reference's arithmetic keeps the count it starts with; nothing else pins. A pinned
    run's count moves neither for busy cores nor for a suite's raise (ALONE_SIGNAL's set_ceiling)."""
    torch.set_num_threads(2)
    assert threads.pinned_threads(setting, reference) == pinned
    governor = threads.ThreadGovernor(torch.device("cpu"), pinned)
    machine.run(2.0, own_cores=1.0, other_cores=1.0)
    governor.poll(time.perf_counter() + 2.0)
    assert torch.get_num_threads() == (pinned or 1)
    threads.set_ceiling(3)
    assert torch.get_num_threads() == (pinned or 3)


def test_threads_is_auto_or_a_count(tmp_path):
    from sbattn import TrainConfig
    from sbattn.errors import ConfigError
    assert TrainConfig(threads="2", output_dir=str(tmp_path)).threads == "2"
    for bad in ("0", "two", "-1"):
        with pytest.raises(ConfigError, match=rf"threads='{bad}': must be auto or a number of threads >= 1"):
            TrainConfig(threads=bad, output_dir=str(tmp_path))


@pytest.mark.parametrize("options, why", [
    ({"compile": "model"}, "--compile model"), ({"compile": "step"}, "--compile step"),
    ({"rng": "reference", "precision": "fp32"}, "the reference's arithmetic"), ({}, None)])
def test_a_compiled_run_keeps_its_thread_count(tmp_path, options, why):
    """Compiled code guards on the thread count: a governed compiled run recompiled at each change (inductor's
    compile workers took the cores, and the governor went from 2 threads to 1). The governor is off there, and
    for the reference's arithmetic; on for the rest."""
    from sbattn import TrainConfig
    from sbattn.train import distributed
    from sbattn.train.state import Run
    torch.set_num_threads(2)
    lines = []
    config = TrainConfig(device="cpu", dataset="fake", output_dir=str(tmp_path), **options)
    try:
        run = Run.start(config, distributed.Context(), "cpu", quiet=False, log=lines.append)
    finally:
        threads.ThreadGovernor(torch.device("cpu"))  # the module's pinned flag back to a governed run's
    said = [line for line in lines if "the thread governor is off" in line]
    if why is None:
        assert run.threads.enabled and said == []
    else:
        assert not run.threads.enabled and len(said) == 1 and f"2 CPU thread(s) for the whole run ({why}" in said[0]


def test_a_run_governed_down_leaves_the_next_run_of_the_process_its_ceiling(machine):
    torch.set_num_threads(2)
    first = threads.ThreadGovernor(torch.device("cpu"))
    machine.run(2.0, own_cores=1.0, other_cores=1.0)  # a busy process beside it until its end
    first.poll(first._mark[0] + 2.0)
    assert torch.get_num_threads() == 1
    first.release()
    second = threads.ThreadGovernor(torch.device("cpu"))
    assert torch.get_num_threads() == 2 and second.ceiling == 2


def test_train_releases_the_governed_count_when_the_run_ends(tmp_path, monkeypatch):
    """Two runs of one suite process: the first, governed down to one thread, must not leave one thread as the
    second's ceiling (it did: a suite's later runs trained on one core of an idle machine)."""
    from sbattn import TrainConfig
    from sbattn.train.loop import train
    torch.set_num_threads(2)
    monkeypatch.setattr(threads.ThreadGovernor, "poll", lambda self, now: torch.set_num_threads(1))  # a busy machine
    config = TrainConfig(device="cpu", dataset="fake", width=0.0625, batch_size=256, epochs=1, milestones=[1],
                         precision="fp32", seed=0, output_dir=str(tmp_path))
    try:
        assert train(config, quiet=True).history[0]["threads"] == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # the suite's own setting (conftest)
