"""Weights files (.pth) are versioned apart from training checkpoints: every format ever written still loads."""
from pathlib import Path

import pytest
import torch

import sbattn
from sbattn import CheckpointError, TrainConfig
from sbattn.records import checkpoint
from sbattn.records.checkpoint import WEIGHTS_FORMAT, save_weights

# The configuration as sbattn 0.1 recorded it before --attention, --resize and --sync-bn, with the reference's
# augmentation under its former name.
CONFIG_0_1 = {"device": "cpu", "attn_ratio": 0.5, "use_sb": True, "use_se": False, "activation": "tanh", "epochs": 1,
              "batch_size": 32, "init_lr": 0.1, "gamma": 0.2, "milestones": [1], "weight_decay": 9e-6,
              "arch": "vgg16", "placement": "stage", "width": 0.0625, "lambda_init": "normal", "data_dir": "./data",
              "download": False, "dataset": "fake", "cache_dir": None, "augment": "seed", "output_dir": "./results",
              "seed": 0, "eval_every": 1, "eval_batch_size": 1000, "precision": "fp32", "compile": False,
              "resume": False}


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = sbattn.vgg16(attention="sb", width=0.0625)
    net(torch.randn(4, 3, 32, 32))  # BatchNorm statistics off their defaults
    return net.eval()


def same_outputs(a, b) -> None:
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("past", ["1, 10 classes implied", "1", "2"])
def test_weights_of_every_earlier_format_load(tmp_path, model, past):
    # Written here as sbattn 0.1 wrote them: format 1 (its earliest files without num_classes), then format 2.
    record = {"format": int(past[0]), "version": "0.1.0", "config": CONFIG_0_1, "state_dict": model.state_dict(),
              "history": [{"epoch": 1, "eval_acc": 0.1}], "summary": {"final_eval_acc": 0.1}}
    if past != "1, 10 classes implied":
        record["num_classes"] = 10
    torch.save(record, tmp_path / "old.pth")
    loaded = sbattn.load(tmp_path / "old.pth")
    assert loaded.config.attention == "sb" and loaded.config.augment == "reference"
    same_outputs(loaded, model)


def test_a_checkpoint_format_bump_leaves_weights_loadable(tmp_path, model, monkeypatch):
    path = tmp_path / "run.pth"
    save_weights(path, model, TrainConfig(**CONFIG_0_1), [], {})
    assert torch.load(path, weights_only=True)["format"] == WEIGHTS_FORMAT
    monkeypatch.setattr(checkpoint, "CHECKPOINT_FORMAT", checkpoint.CHECKPOINT_FORMAT + 1)
    same_outputs(sbattn.load(path), model)


def test_formats_from_the_future_are_refused_naming_what_this_version_reads(tmp_path, model):
    torch.save({"format": WEIGHTS_FORMAT + 1, "version": "9.0", "config": CONFIG_0_1,
                "state_dict": model.state_dict()}, tmp_path / "new.pth")
    with pytest.raises(CheckpointError, match=f"format {WEIGHTS_FORMAT + 1}, this sbattn reads weights format 1, 2"):
        sbattn.load(tmp_path / "new.pth")
    torch.save({"format": 1, "version": "0.1.0", "config": CONFIG_0_1, "model": model.state_dict()},
               tmp_path / "old.ckpt")  # a checkpoint's number is its own: 1 is not what this version resumes
    with pytest.raises(CheckpointError, match="format 1, this sbattn reads checkpoint format 2, 3"):
        checkpoint.read_record(tmp_path / "old.ckpt")


def test_a_checkpoint_without_its_checksum_is_refused_unless_its_format_predates_checksums(tmp_path, model):
    """A current checkpoint without a checksum was stripped of it: refused. Format 2's (sbattn 0.1.0 wrote them
    without one) is read. And checkpoint.py with its format bumped once more still requires it of the new format."""
    import re
    import types
    record = {"version": "0.3.0", "config": CONFIG_0_1, "model": model.state_dict()}
    for number in (checkpoint.CHECKPOINT_FORMAT, checkpoint.CHECKPOINT_FORMAT + 1):
        source = Path(checkpoint.__file__).read_text()
        bumped, n = re.subn(r"^CHECKPOINT_FORMAT = \d+", f"CHECKPOINT_FORMAT = {number}", source, flags=re.M)
        bumped = bumped.replace("CHECKPOINT_FORMATS_READ = (2, 3)", f"CHECKPOINT_FORMATS_READ = (2, 3, {number})")
        assert n == 1
        module = types.ModuleType("sbattn.records.bumped_checkpoint")
        module.__package__ = "sbattn.records"
        exec(compile(bumped, checkpoint.__file__, "exec"), module.__dict__)
        torch.save({"format": number, **record}, tmp_path / "stripped.ckpt")
        with pytest.raises(CheckpointError, match=f"has no checksum, which every file of its format {number}"):
            module.read_record(tmp_path / "stripped.ckpt")
    torch.save({"format": 2, **record}, tmp_path / "old.ckpt")
    assert checkpoint.read_record(tmp_path / "old.ckpt")["format"] == 2
