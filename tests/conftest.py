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
