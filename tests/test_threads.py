"""The thread governor: a CPU run uses the cores other processes leave it, never more than its ceiling."""
import pytest
import torch

import sbattn.train.threads as threads


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
