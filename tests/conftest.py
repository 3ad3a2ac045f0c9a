import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny test models run fastest on one thread, and a loaded machine slows multi-threaded ones badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# The slowest tests (seconds, the idle warm run of 2026-12-05 on the 2-core EPYC), started first: pytest-xdist
# splits the list between its two workers in order and steals from the back of a queue, so a long test left near
# the end of one keeps its core busy while the other idles. Only tests without a module-scoped fixture: moved away
# from their module's others, such a fixture would be built twice. Order only: no test depends on it.
SLOW_FIRST = {
    "tests/test_gpu_script.py::test_the_call_dry_run_brings_back": 54,
    "tests/test_gpu_script.py::test_dry_run_writes_every_figure": 34,
    "tests/test_airbench_recipe.py::test_the_recipe_fused_over_seeds_and_compiled": 31,
    "tests/test_distributed.py::test_a_hung_rank_stops": 23,
    "tests/test_train.py::test_compile_computes_what_eager_mode_does": 21,
    "tests/test_suites.py::test_ctrl_c_to_a_jobs_suite": 19,
    "tests/test_distributed.py::test_a_run_checkpointed_at_an_epochs_end_by_one_process": 14,
    "tests/test_fused.py::test_a_failed_fused_step_stops_the_others": 13,
    "tests/test_train.py::test_the_whole_step_compiled_trains": 9,
    "tests/test_reference_mode.py::test_example_py_runs_the_reference_arithmetic": 9,
}


def pytest_collection_modifyitems(items):
    def seconds(item) -> int:
        return next((s for prefix, s in SLOW_FIRST.items() if item.nodeid.startswith(prefix)), 0)
    items.sort(key=seconds, reverse=True)  # stable: the rest keep their order
