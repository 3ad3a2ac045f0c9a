import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread_session():
    """Tiny test models run fastest on one thread, and a loaded machine slows multi-threaded ones badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def one_thread_module(one_thread_session):
    torch.set_num_threads(1)  # before the module's own fixtures train (see one_thread)


@pytest.fixture(autouse=True)
def one_thread(one_thread_module):
    """Every test (and every module's fixtures) starts on one thread, whatever the test before it on this worker
    left: a run cut short by a stand-in for a kill (an exception no code below catches) leaves its thread
    governor's count, as the killed process it stands for would have, and an in-process run after it would
    otherwise train on two threads."""
    torch.set_num_threads(1)


@pytest.fixture
def attention_registry(monkeypatch):
    """Blocks a test registers are gone after it."""
    import sbattn.nn.attention as attention
    monkeypatch.setattr(attention, "_ATTENTION", dict(attention._ATTENTION))


@pytest.fixture
def gate_attention(attention_registry):
    """A toy attention kind, "gate": a learned scale per channel, registered for one test."""
    import sbattn
    from torch import nn

    @sbattn.register_attention("gate")
    class Gate(nn.Module):
        def __init__(self, channels, ratio=0.5):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels))

        def forward(self, x):
            return x * self.weight[:, None, None]

    return Gate


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """The tests' runs cache what they measure and decode in a folder of their own, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SBATTN_CACHE", str(tmp_path_factory.mktemp("sbattn-cache")))
        yield


# The slowest tests (CPU seconds, warm compiler cache, 2026-12-05 on the 2-core EPYC), each group run by one worker
# in its order, started first. pytest-xdist's worksteal hands each worker a contiguous share of the list and later
# moves the back half of the longest queue to a worker that ran out: so each worker's share starts with its own
# slow tests (largest first to the least loaded), and no long test is left to the end of a queue while the others
# idle. Only tests without a module-scoped fixture (moved away from their module's others, such a fixture would be
# built twice). Order only: no test depends on it.
SLOW_FIRST = [
    (68, "tests/test_gpu_script.py::test_the_call_dry_run_brings_back"),
    (49, "tests/test_gpu_script.py::test_dry_run_writes_every_figure"),
    # the compiled step's kernels are mostly the compiled model's: after it, a cold compiler cache builds them once
    (33, "tests/test_train.py::test_compile_computes_what_eager_mode_does",
     "tests/test_train.py::test_the_whole_step_compiled_trains"),
    (29, "tests/test_suites.py::test_ctrl_c_to_a_jobs_suite"),
    (13, "tests/test_suites.py::test_jobs_trains_in_processes_with_the_same_results"),
    (15, "tests/test_airbench_recipe.py::test_the_recipe_fused_over_seeds_and_compiled"),
    (15, "tests/test_distributed.py::test_a_node_joining_an_elastic_job"),
    (12, "tests/test_train.py::test_sigkill_and_resume_is_identical"),
    (11, "tests/test_types.py::test_the_package_type_checks"),
    (10, "tests/test_distributed.py::test_a_hung_rank_stops"),
    (9, "tests/test_fused.py::test_a_failed_fused_step_stops_the_others"),
    (8, "tests/test_reference_mode.py::test_example_py_runs_the_reference_arithmetic"),
]


def pytest_collection_modifyitems(items):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # the same in every worker: the same order
    slow, seen = [], set()
    for seconds, *prefixes in SLOW_FIRST:
        group = [item for prefix in prefixes for item in items if item.nodeid.startswith(prefix)]
        slow.append((seconds, group))
        seen.update(map(id, group))
    shares, loads = [[] for _ in range(workers)], [0] * workers
    for seconds, group in sorted(slow, key=lambda g: -g[0]):
        least = loads.index(min(loads))
        shares[least] += group
        loads[least] += seconds
    rest = [item for item in items if id(item) not in seen]
    ordered, pending = [], len(items)
    for worker, share in enumerate(shares):  # worksteal's first hand-out: len(pending) // workers left, in turn
        size = pending // (workers - worker)
        taken = max(0, size - len(share))
        ordered += share + rest[:taken]
        rest, pending = rest[taken:], pending - len(share) - taken
    items[:] = ordered + rest
