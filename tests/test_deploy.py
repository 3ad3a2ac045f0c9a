"""A trained model outside training: ONNX and torch.export round trips, sbattn evaluate / predict / export, hub."""
import os
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import sbattn
from sbattn import TrainConfig
from sbattn.data import normalize, to_device_uint8
from sbattn.cli import main
from sbattn.data import load_fake
from sbattn.data.fake import FAKE_SIZES
from sbattn.inference import export_onnx, export_program
from sbattn.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ResNet-20 with SB per block, trained for one epoch on the fake set: (its .pth, the run's summary)."""
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(arch="resnet20", placement="block", device="cpu", dataset="fake", width=0.25,
                         batch_size=32, precision="fp32", epochs=1, milestones=[1], seed=0, output_dir=str(out))
    result = train(config, quiet=True)
    assert result.exit_code == 0
    return out / f"{result.paths.name}.pth", result.summary


@pytest.fixture(scope="module")
def test_images():
    data = load_fake()
    return data.test_images, data.test_labels, data.classes


def logits(model: nn.Module, images_u8: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(normalize(to_device_uint8(images_u8, "cpu")))


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def test_cli_export_onnx_round_trip(trained, test_images, tmp_path, capsys):
    path, _ = trained
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(path), "--format", "onnx", "--output", str(onnx_path)]) == 0
    assert str(onnx_path) in capsys.readouterr().out
    model = sbattn.load(path)
    for batch in (7, 1):  # the batch dimension is dynamic: both run from the one file
        x = normalize(to_device_uint8(test_images[0][:batch], "cpu"))
        expected = logits(model, test_images[0][:batch])
        torch.testing.assert_close(run_onnx(onnx_path, x), expected, rtol=1e-4, atol=1e-4)


def test_cli_export_torch_program_round_trip(trained, test_images, capsys):
    path, _ = trained
    assert main(["export", str(path), "--format", "torch-export"]) == 0
    program_path = path.with_suffix(".pt2")
    assert str(program_path) in capsys.readouterr().out
    program = torch.export.load(str(program_path)).module()
    model = sbattn.load(path)
    for batch in (5, 1):
        x = normalize(to_device_uint8(test_images[0][:batch], "cpu"))
        torch.testing.assert_close(program(x), logits(model, test_images[0][:batch]), rtol=1e-4, atol=1e-4)


def test_torchscript_onnx_exporter_and_a_fresh_vgg(tmp_path):
    torch.manual_seed(0)
    model = sbattn.vgg16(attention="se", width=0.125)
    model(torch.randn(4, 3, 32, 32))  # moves the BatchNorm statistics off their defaults
    model.eval()
    path = export_onnx(model, tmp_path / "vgg.onnx", dynamo=False)
    for batch in (3, 1):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(run_onnx(path, x), model(x), rtol=1e-4, atol=1e-4)


def test_export_program_of_an_attached_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    sbattn.attach(model, "sb", where=nn.BatchNorm2d)
    model.train()
    path = export_program(model, tmp_path / "attached.pt2")
    assert model.training  # exporting does not change the caller's model
    program = torch.export.load(str(path)).module()
    model.eval()
    for batch in (3, 1):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-4)


def test_evaluate_reports_the_runs_own_test_accuracy(trained, capsys):
    path, summary = trained
    assert main(["evaluate", str(path), "--device", "cpu", "--batch-size", "100"]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {100 * summary['final_eval_acc']:.2f}%" in out
    assert f"test loss {summary['final_eval_loss']:.4f}" in out
    assert f"{FAKE_SIZES[1]} images" in out


def test_evaluate_without_data_names_only_its_own_options(trained, tmp_path, capsys):
    path, _ = trained
    assert main(["evaluate", str(path), "--dataset", "cifar10", "--data-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir" in err
    assert "--download" not in err.replace("sbattn train --download", "")  # evaluate has no --download


def test_predict_on_images_written_by_the_test(trained, test_images, tmp_path, capsys):
    path, _ = trained
    images, _, classes = test_images
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(images[i]).save(files[-1])
    assert main(["predict", str(path), *map(str, files), "--topk", "3", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 4
    probs = torch.softmax(logits(sbattn.load(path), images[:3]), 1)
    for i, file in enumerate(files):
        assert lines[4 * i] == str(file)
        expected_p, expected_k = probs[i].topk(3)
        for line, p, k in zip(lines[4 * i + 1:4 * i + 4], expected_p.tolist(), expected_k.tolist()):
            name, shown = re.fullmatch(r"\s+(\S+)\s+([\d.]+)%", line).groups()
            assert name == classes[k]  # the fake set's names, from the run's dataset
            assert float(shown) == pytest.approx(100 * p, abs=0.006)


def test_predict_wants_32x32_unless_resize(trained, tmp_path, capsys):
    path, _ = trained
    big = tmp_path / "big.png"
    Image.fromarray(np.full((40, 48, 4), 128, np.uint8), "RGBA").save(big)
    assert main(["predict", str(path), str(big)]) == 2
    err = capsys.readouterr().err.strip()
    assert "48x40" in err and "--resize" in err and "\n" not in err
    assert main(["predict", str(path), str(big), "--resize", "--topk", "20"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 10  # top-k stops at the number of classes


@pytest.mark.parametrize("command", [["evaluate"], ["predict"], ["export", "--format", "onnx"]])
def test_bad_checkpoint_is_exit_2_with_one_line(command, tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    extra = [str(tmp_path / "x.png")] if command == ["predict"] else []
    for path in (missing, junk):
        assert main([command[0], str(path), *extra, *command[1:]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and err.startswith(f"sbattn {command[0]}: error:")


def test_torch_hub_builds_the_models():
    model = torch.hub.load(str(ROOT), "vgg16", source="local", attention="sb", width=0.125)
    assert isinstance(model, sbattn.VGG)
    assert sum(isinstance(m, sbattn.ShiftBalance) for m in model.modules()) == 4
    resnet = torch.hub.load(str(ROOT), "resnet20", source="local", attention="se")
    assert sum(p.numel() for p in resnet.parameters()) == sum(p.numel() for p in sbattn.resnet20("se").parameters())
    for name in ("resnet56", "resnet18"):
        built = torch.hub.load(str(ROOT), name, source="local", width=0.25)
        assert type(built) is sbattn.ResNet and len(built.stages) == len(sbattn.create_model(name).stages)
    with pytest.raises(ValueError, match="no pretrained weights"):
        torch.hub.load(str(ROOT), "resnet56", source="local", pretrained=True)


# ---------------------------------------------------------------- exports a consumer can use, written safely

def test_an_onnx_file_says_how_to_feed_it_and_what_its_outputs_are(trained, test_images, tmp_path):
    import json

    import onnx
    path, _ = trained
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(path), "-o", str(onnx_path)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    images, labels, classes = test_images
    assert json.loads(meta["class_names"]) == classes  # the fake set's names, from the run
    config = json.loads(meta["config"])
    assert (config["arch"], config["attention"], config["width"]) == ("resnet20", "sb", 0.25)
    # A consumer that knows only the metadata: the pixels normalised as it says give the model's logits.
    norm = json.loads(meta["normalization"])
    mean, std = (torch.tensor(norm[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (torch.from_numpy(images[:4]).permute(0, 3, 1, 2).float() / norm["divide_by"] - mean) / std
    torch.testing.assert_close(run_onnx(onnx_path, x), logits(sbattn.load(path), images[:4]), rtol=1e-4, atol=1e-4)


def test_weights_beside_the_onnx_file_move_in_with_it(tmp_path):
    torch.manual_seed(0)
    model = sbattn.vgg16(attention="sb", width=0.0625).eval()
    path = export_onnx(model, tmp_path / "vgg.onnx", dynamo=True, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg.onnx", "vgg.onnx.data"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(path, x), model(x), rtol=1e-4, atol=1e-4)


def test_export_without_onnx_names_the_install_command(trained, tmp_path, monkeypatch, capsys):
    import importlib.util
    path, _ = trained
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert main(["export", str(path), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "sbattn[export]"' in err
    assert not list(tmp_path.iterdir())


def test_export_never_writes_over_its_input(trained, tmp_path, capsys):
    path, _ = trained
    copy = tmp_path / "run.pth"
    copy.write_bytes(path.read_bytes())
    for output in (copy, tmp_path / "." / "run.pth"):
        assert main(["export", str(copy), "-o", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is the file being exported" in err
    assert copy.read_bytes() == path.read_bytes()


def _full_disk(monkeypatch, fmt):
    """ENOSPC halfway through the export's write."""
    import errno
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if fmt == "onnx":
        def export(model, args, f, **kwargs):
            Path(f).write_bytes(b"half an ONNX file")
            raise full
        monkeypatch.setattr(torch.onnx, "export", export)
    else:
        import sbattn.files
        real_open = open

        class HalfWritten:
            def __init__(self, *args):
                self.f = real_open(*args)

            def write(self, data):
                self.f.write(bytes(data)[:10])
                raise full

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()
        monkeypatch.setattr(sbattn.files, "open", HalfWritten, raising=False)


def _read_only(monkeypatch, fmt):
    import errno
    import sbattn.files

    def mkdtemp(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(sbattn.files.tempfile, "mkdtemp", mkdtemp)


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
@pytest.mark.parametrize("failure, words", [(_full_disk, "No space left on device"),
                                            (_read_only, "Read-only file system")])
def test_a_failed_export_is_one_line_and_keeps_the_earlier_export(trained, tmp_path, monkeypatch, capsys, fmt,
                                                                  failure, words):
    path, _ = trained
    output = tmp_path / f"model{'.onnx' if fmt == 'onnx' else '.pt2'}"
    assert main(["export", str(path), "--format", fmt, "-o", str(output)]) == 0
    earlier = output.read_bytes()
    failure(monkeypatch, fmt)
    capsys.readouterr()
    assert main(["export", str(path), "--format", fmt, "-o", str(output)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and f"the earlier {output.name} is left as it was" in err
    assert output.read_bytes() == earlier and [p.name for p in tmp_path.iterdir()] == [output.name]


def test_sigterm_during_an_export_leaves_the_earlier_file_and_no_half_made_one(trained, tmp_path):
    """SIGTERM while the file is written interrupts as Ctrl-C does: exit 130 in one line, the staging folder
    removed, the earlier export as it was (SIGTERM's default death left a hidden .*.tmp folder behind)."""
    import subprocess
    import sys
    path, _ = trained
    output = tmp_path / "model.pt2"
    assert main(["export", str(path), "--format", "torch-export", "-o", str(output)]) == 0
    earlier = output.read_bytes()
    script = f"""
import os, signal, sys
import sbattn.files
real_open = open
class Terminated:  # the write is under way when SIGTERM comes
    def __init__(self, *args):
        self.f = real_open(*args)
    def write(self, data):
        self.f.write(bytes(data)[:10])
        os.kill(os.getpid(), signal.SIGTERM)
        return self.f.write(bytes(data)[10:])
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()
sbattn.files.open = Terminated
from sbattn.cli import main
sys.exit(main(["export", {str(path)!r}, "--format", "torch-export", "-o", {str(output)!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130 and proc.stderr.strip().splitlines() == ["sbattn export: interrupted"], proc.stderr
    assert output.read_bytes() == earlier and [p.name for p in tmp_path.iterdir()] == [output.name]
