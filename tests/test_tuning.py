"""The training layout: given, or measured once per machine and model and then cached, and kept on resume."""
import json

import pytest
import torch

import sbattn.train.step as tuning
from sbattn import TrainConfig
from sbattn.train.loop import train


def config(tmp_path, **overrides) -> TrainConfig:
    values = dict(device="cpu", dataset="fake", width=0.0625, batch_size=32, precision="fp32", epochs=1,
                  milestones=[1], seed=0, output_dir=str(tmp_path / "results"), eval_batch_size=256,
                  cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**{**values, **overrides})


@pytest.fixture
def measured(monkeypatch):
    """A stand-in for the timing: contiguous measures faster; counts the measurements."""
    calls = []

    def fake_measure(config, device, amp_dtype, num_classes):
        calls.append(config.arch)
        return {"channels_last": 0.2, "contiguous": 0.1}
    monkeypatch.setattr(tuning, "_measure", fake_measure)
    return calls


def history(result):
    return [(h["layout"], h["train_loss"]) for h in result.history]


def test_auto_measures_once_then_reads_the_cache(tmp_path, measured):
    first = train(config(tmp_path, precision="bf16"), quiet=True)  # fp32 has its rule (the next test)
    assert measured == ["vgg16"] and first.history[0]["layout"] == "contiguous"
    cached = json.loads((tmp_path / "cache" / "tuning.json").read_text())
    assert [v["layout"] for v in cached.values()] == ["contiguous"]
    second = train(config(tmp_path, seed=1, precision="bf16"), quiet=True)
    assert measured == ["vgg16"] and second.history[0]["layout"] == "contiguous"  # no second measurement
    train(config(tmp_path, seed=2, width=0.125, precision="bf16"), quiet=True)
    assert measured == ["vgg16", "vgg16"]  # another model: measured anew


def test_fp32_on_a_cpu_trains_contiguous_without_measuring(tmp_path, monkeypatch):
    """docs/fp32.md: channels-last's fp32 gradients stray from float64's; fp32 takes contiguous by rule."""
    monkeypatch.setattr(tuning, "_measure", lambda *a: {"channels_last": 0.1, "contiguous": 0.2})  # faster, unasked
    result = train(config(tmp_path), quiet=True)
    assert result.history[0]["layout"] == "contiguous" and not (tmp_path / "cache" / "tuning.json").exists()


def test_a_given_layout_is_used_and_the_weights_are_in_it(tmp_path, measured):
    result = train(config(tmp_path, layout="channels_last"), quiet=True)
    assert measured == [] and result.history[0]["layout"] == "channels_last"


def test_the_layout_changes_nothing_but_rounding(tmp_path, measured):
    # At a learning rate that barely moves the weights, so that rounding differences are not amplified.
    a = train(config(tmp_path / "a", layout="channels_last", init_lr=1e-4), quiet=True).history[0]
    b = train(config(tmp_path / "b", layout="contiguous", init_lr=1e-4), quiet=True).history[0]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert a["eval_acc"] == b["eval_acc"]


def test_resume_keeps_the_checkpoints_layout(tmp_path, measured, monkeypatch):
    import sbattn.train.loop as loop
    c = config(tmp_path, epochs=2, milestones=[1], precision="bf16")
    with pytest.MonkeyPatch.context() as mp:  # stop after the first epoch, its checkpoint left
        mp.setattr(loop, "_finish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        real_end = loop.end_epoch

        def end_then_stop(run, state, *args):
            real_end(run, state, *args)
            if state.epoch == 1:
                state.save(run.paths.checkpoint, run.config, run.ctx)
                raise KeyboardInterrupt
        mp.setattr(loop, "end_epoch", end_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train(c, quiet=True)
    monkeypatch.setattr(tuning, "_measure", lambda *a: {"channels_last": 0.1, "contiguous": 0.2})
    (tmp_path / "cache" / "tuning.json").unlink()  # the machine would now choose channels-last
    resumed = train(TrainConfig.from_dict(c.to_dict(), resume=True), quiet=True)
    assert [h["layout"] for h in resumed.history] == ["contiguous", "contiguous"]


def test_the_measurement_leaves_the_random_streams_alone(tmp_path):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    times = tuning._measure(config(tmp_path, batch_size=4), torch.device("cpu"), None, 10)
    assert set(times) == {"channels_last", "contiguous"} and all(t > 0 for t in times.values())
    assert torch.equal(torch.get_rng_state(), before)


def test_under_torchrun_rank_0_alone_measures_and_every_rank_takes_its_choice(monkeypatch):
    from types import SimpleNamespace

    import sbattn.train.loop as start
    from sbattn.train import distributed
    from sbattn.train.step import LayoutChoice
    measured = []
    monkeypatch.setattr(start, "choose_layout",
                        lambda *a: measured.append(a) or LayoutChoice("contiguous", "measured"))
    rank0 = LayoutChoice("channels_last", "measured")
    monkeypatch.setattr(distributed, "gather_objects", lambda ctx, obj: [rank0, obj])  # rank 0's, then this rank's
    run = SimpleNamespace(ctx=distributed.Context(rank=1, world_size=2), config=None, device=torch.device("cpu"),
                          amp_dtype=None)
    assert start._layout(run, None) == rank0
    assert measured == []  # rank 1 neither measured nor wrote the cache


@pytest.mark.parametrize("poison", ["a string", "5", "bogus layout", "deep", "fifo"])
def test_a_poisoned_cache_or_a_fifo_there_is_measured_again_not_trusted(tmp_path, measured, poison):
    """tuning.json is a cache: an entry that is no measurement, a file nested too deeply, or a FIFO at its name
    (never waited on) costs a measurement, not a traceback or a hang."""
    c, cpu = config(tmp_path, precision="bf16"), torch.device("cpu")
    assert tuning.choose_layout(c, cpu, torch.bfloat16, 10).layout == "contiguous" and len(measured) == 1
    path = tmp_path / "cache" / "tuning.json"
    key = next(iter(json.loads(path.read_text())))
    path.unlink()
    if poison == "fifo":
        import os
        os.mkfifo(path)
    elif poison == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        entry = {"a string": "contiguous", "5": 5, "bogus layout": {"layout": "bogus", "step_seconds": {}}}[poison]
        path.write_text(json.dumps({key: entry}))
    choice = tuning.choose_layout(c, cpu, torch.bfloat16, 10)
    assert (choice.layout, choice.how, len(measured)) == ("contiguous", "measured", 2)
