"""--tensorboard: each epoch's scalars as events under the output directory, read back as TensorBoard reads them."""
import importlib.util

import pytest

import sbattn
from sbattn import ConfigError, TrainConfig
from sbattn.train.loop import train
from sbattn.train.state import RunState

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(device="cpu", dataset="fake", width=0.0625, batch_size=32, precision="fp32", epochs=3,
                  milestones=[2], seed=0, output_dir=str(tmp_path), eval_batch_size=256, tensorboard=True)
    return TrainConfig(**{**values, **overrides})


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_epochs_scalars_are_written_and_a_resume_does_not_repeat_them(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    real_save, saves = RunState.save, []

    def crash_on_second_save(self, *args, **kwargs):  # killed after epoch 2 was logged, before its checkpoint
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt
        real_save(self, *args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(RunState, "save", crash_on_second_save)
        with pytest.raises(KeyboardInterrupt):
            train(config, quiet=True)
    result = train(TrainConfig.from_dict(config.to_dict(), resume=True), quiet=True)
    found = scalars(tmp_path / "tensorboard" / config.run_name)
    history = result.history
    for key, tag in (("train_loss", "loss/train"), ("eval_acc", "accuracy/eval"), ("lr", "learning_rate"),
                     ("images_per_sec", "throughput/images_per_sec"), ("eval_loss", "loss/eval")):
        assert [step for step, _ in found[tag]] == [1, 2, 3], tag  # epoch 2 once, though it was logged twice
        assert [value for _, value in found[tag]] == pytest.approx([h[key] for h in history], rel=1e-6), tag
    blocks = sum(isinstance(m, sbattn.ShiftBalance) for m in sbattn.load(result.paths.with_suffix(".pth")).modules())
    assert sorted(t for t in found if t.startswith("lambda/")) == [f"lambda/block_{i}" for i in range(1, blocks + 1)]
    assert [v for _, v in found["lambda/block_1"]] == pytest.approx([h["lambda_abs_mean"][0] for h in history])


def test_without_the_package_the_option_is_refused_in_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install "sbattn\[tensorboard\]"'):
        tiny_config(tmp_path)
    from sbattn.cli import main
    assert main(["train", "--tensorboard", "--device=cpu", "--dataset=fake", f"--output-dir={tmp_path}/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "sbattn[tensorboard]"' in err
    assert not (tmp_path / "x").exists()
    tiny_config(tmp_path, tensorboard=False)  # off, as by default: nothing needed


@pytest.mark.parametrize("planted", ["link", "file", "run-file", "run-link"])
def test_events_are_never_written_through_a_link_or_into_a_file_in_the_way(tmp_path, capsys, planted):
    from sbattn.cli import main
    from _runs import TINY, one_line, run_name
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    board = out / "tensorboard"
    run = board / run_name(*TINY, "--seed=0")
    if planted == "link":
        board.symlink_to(elsewhere)
    elif planted == "file":
        board.write_text("not a folder")
    else:
        board.mkdir()
        run.symlink_to(elsewhere) if planted == "run-link" else run.write_text("not a folder")
    assert main(["train", *TINY, "--seed=0", "--tensorboard", f"--output-dir={out}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "is not a folder (it is a" in line and "--tensorboard writes its events there, never through a link" in line
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
