"""Inputs that would hang or exhaust the machine: FIFOs, devices and links out of a dataset's folder, archive
entries and images larger than sbattn reads, decompression bombs, and predictions for many images; each is
refused with one line before anything large is read, or handled a batch at a time."""
import io
import os
import resource
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

import sbattn
from sbattn import TrainConfig
from sbattn.cli import main
from sbattn.data import DataError, load_cifar10
from sbattn.data.limits import MAX_ENTRY_BYTES, MAX_IMAGE_BYTES
from sbattn.records.checkpoint import save_weights

sys.path.insert(0, str(Path(__file__).parent))
from _datagen import settle, tree_files, write_official_dir, write_tree  # noqa: E402
from _runs import one_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIRST_IMAGE = "train/airplane/0000.png"  # of tree_files()


def run_cli(*args: str, memory_gb: int = 3) -> subprocess.CompletedProcess:
    """`python -m sbattn ARGS` with its address space limited, so that a reader gone wrong cannot take the
    machine with it; a hang is a TimeoutExpired."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    limit = memory_gb << 30
    return subprocess.run([sys.executable, "-m", "sbattn", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))


def load(root: Path, tmp_path: Path):
    return load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)


@pytest.fixture
def tree(tmp_path) -> Path:
    return write_tree(tmp_path / "tree", tree_files()[0])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """An untrained tiny model's weights file: predictions need a model, not a good one."""
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    torch.manual_seed(0)
    config = TrainConfig(device="cpu", dataset="fake", width=0.0625)
    save_weights(path, sbattn.create_model("vgg16", attention="sb", width=0.0625).eval(), config, [], {})
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: a 100-byte decompression bomb as far as its header tells."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------- image folders


def test_a_fifo_in_an_image_folder_is_refused_not_waited_on(tree, tmp_path):
    os.mkfifo(tree / "train/airplane/9999.png")
    proc = run_cli("train", "--device=cpu", f"--data-dir={tree}", f"--cache-dir={tmp_path / 'cache'}",
                   "--width=0.0625", "--epochs=1", f"--output-dir={tmp_path / 'out'}")
    assert proc.returncode == 1
    assert "9999.png is a FIFO, not a regular file" in one_line(proc.stderr)


def test_a_link_to_a_device_in_an_image_folder_is_refused_before_reading(tree, tmp_path):
    os.symlink("/dev/zero", tree / "train/airplane/9999.png")
    proc = run_cli("train", "--device=cpu", f"--data-dir={tree}", f"--cache-dir={tmp_path / 'cache'}",
                   "--width=0.0625", "--epochs=1", f"--output-dir={tmp_path / 'out'}")
    assert proc.returncode == 1
    assert "9999.png is a link leading out of" in one_line(proc.stderr) and "(to /dev/zero)" in proc.stderr


def test_a_fifo_among_the_official_batches_is_refused_not_waited_on(tmp_path):
    batches, _ = write_official_dir(tmp_path / "data")
    (batches / "data_batch_1").unlink()
    os.mkfifo(batches / "data_batch_1")
    proc = run_cli("train", "--device=cpu", f"--data-dir={batches}", f"--cache-dir={tmp_path / 'cache'}",
                   "--width=0.0625", "--epochs=1", f"--output-dir={tmp_path / 'out'}")
    assert proc.returncode == 1
    assert "data_batch_1 is a FIFO, not a regular file" in one_line(proc.stderr)


def test_links_may_not_lead_out_of_the_tree_but_may_stay_inside(tree, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes((tree / FIRST_IMAGE).read_bytes())
    inside = tree / "train/airplane/9998.png"
    os.symlink(tree / FIRST_IMAGE, inside)
    assert len(load(tree, tmp_path).train_labels) == 13  # a link inside the tree is an image like any
    os.symlink(outside, tree / "train/airplane/9999.png")
    with pytest.raises(DataError, match="9999.png is a link leading out of"):
        load(tree, tmp_path)


def test_an_image_file_larger_than_the_limit_is_refused_unread(tree, tmp_path):
    with open(tree / "train/airplane/9999.png", "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: the size is there, the bytes are not
    with pytest.raises(DataError, match=f"9999.png is {MAX_IMAGE_BYTES + 1:,} bytes, more than the"):
        load(tree, tmp_path)


def test_a_decompression_bomb_in_an_image_folder_is_one_line(tree, tmp_path):
    (tree / "train/airplane/9999.png").write_bytes(png_header(20000, 20000))
    with pytest.raises(DataError, match="9999.png has more than the 89,478,485 pixels sbattn decodes") as refused:
        load(tree, tmp_path)
    assert "\n" not in str(refused.value)


# ------------------------------------------------------------------------------------------ archives


def zip_with(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in files.items():
            z.writestr(name, blob)
    return path


def tar_with(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    return path


@pytest.mark.parametrize("write, suffix", [(zip_with, "zip"), (tar_with, "tar.gz")])
def test_an_archive_entry_larger_than_the_limit_is_refused_before_it_is_unpacked(tmp_path, write, suffix):
    files = tree_files()[0]
    files["train/airplane/zeros.png"] = bytes(MAX_ENTRY_BYTES + 1)  # a few KB packed
    archive = write(tmp_path / f"bomb.{suffix}", files)
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(DataError, match=f"entry 'train/airplane/zeros.png' is {MAX_ENTRY_BYTES + 1:,} bytes, more "
                                        f"than the {MAX_ENTRY_BYTES:,}"):
        load(archive, tmp_path)


# ------------------------------------------------------------------------------------------- predict


def test_predict_refuses_a_fifo_and_a_decompression_bomb_in_one_line(weights, tmp_path):
    fifo, bomb = tmp_path / "fifo.png", tmp_path / "bomb.png"
    os.mkfifo(fifo)
    bomb.write_bytes(png_header(20000, 20000))
    for image, words in ((fifo, "fifo.png is a FIFO"), (bomb, "bomb.png has more than the 89,478,485 pixels")):
        proc = run_cli("predict", str(weights), str(image), "--device", "cpu", "--resize")
        assert proc.returncode == 2
        assert words in one_line(proc.stderr)


def test_a_damaged_image_is_one_line_whatever_pillow_raises(tmp_path):
    """Pillow's decoders raise ValueError and others besides OSError (a PPM with a bad maxval): one line, as in
    training."""
    from sbattn.errors import UserError
    from sbattn.inference import read_images
    bad = tmp_path / "bad.ppm"
    bad.write_bytes(b"P6\n2 2\n0\n" + bytes(12))
    with pytest.raises(UserError, match=r"^cannot read image .*bad\.ppm \(ValueError: maxval must be"):
        read_images([bad])


def test_predict_classifies_a_batch_at_a_time(weights, tmp_path, monkeypatch, capsys):
    import sbattn.cli.deploy as deploy_cli
    monkeypatch.setattr(deploy_cli, "PREDICT_BATCH", 4)
    files = tree_files()[0]
    names = sorted(files)[:10]
    write_tree(tmp_path, {name: files[name] for name in names})
    real_load, batches = deploy_cli.load, []

    def load_and_watch(*args, **kwargs):
        model = real_load(*args, **kwargs)
        model.register_forward_hook(lambda m, inputs, out: batches.append(len(inputs[0])))
        return model

    monkeypatch.setattr(deploy_cli, "load", load_and_watch)
    paths = [str(tmp_path / name) for name in names]
    assert main(["predict", str(weights), *paths, "--device", "cpu", "--topk", "1"]) == 0
    assert batches == [4, 4, 2]
    assert capsys.readouterr().out.splitlines()[::2] == paths  # every image, in order, each with its top class


def test_predict_takes_no_field_of_a_file_on_trust(weights, tmp_path, capsys):
    crafted = tmp_path / "crafted.pth"
    record = torch.load(weights, weights_only=True)
    record.update(summary=["not", "a", "summary"], classes=7)  # made by hand, and sealed as sbattn seals its files
    from sbattn.records.integrity import seal
    torch.save(seal(record), crafted)
    image = write_tree(tmp_path, {FIRST_IMAGE: tree_files()[0][FIRST_IMAGE]}) / FIRST_IMAGE
    assert main(["predict", str(crafted), str(image), "--device", "cpu", "--topk", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0].startswith("fake")  # the run's dataset's names


def test_an_image_folder_with_names_that_are_not_utf8_loads(tmp_path):
    """File and class-folder names in any bytes (os.fsdecode's surrogates): the cache's stamp and the data's
    fingerprint hash their bytes, as a tar of the same tree trains."""
    files, expected = tree_files()
    odd = os.fsdecode(b"cl\xffss")  # a class folder's name that is not UTF-8
    renamed = {name.replace(f"/{expected.classes[0]}/", f"/{odd}/").replace("0000.png", os.fsdecode(b"\xfe.png")):
               blob for name, blob in files.items()}
    data = load(settle(write_tree(tmp_path / "tree", renamed)), tmp_path)
    assert odd in data.classes and len(data.train_labels) == len(expected.train_labels)
    assert load(tmp_path / "tree", tmp_path).fingerprint() == data.fingerprint()  # from the cache: the same data


def test_a_fifo_where_the_decoded_data_is_cached_is_a_miss_not_a_wait(tree, tmp_path):
    first = load(settle(tree), tmp_path)  # a settled tree is cached
    cached = next((tmp_path / "cache").glob("cifar10-*.npz"))
    cached.unlink()
    os.mkfifo(cached)
    with pytest.warns(UserWarning, match="ignoring unreadable cache file .* is a FIFO"):
        again = load(tree, tmp_path)  # decoded again; no writer ever opens the FIFO
    assert again.fingerprint() == first.fingerprint()


def _nested_record(path, depth: int) -> None:
    """A weights file whose history is a list in a list ... `depth` deep, made by the pickle's own opcodes (no
    pickler recurses that far) and stored as torch.save stores entries."""
    buf = io.BytesIO()
    torch.save({"format": 3, "state_dict": {}, "history": "PLACEHOLDER"}, buf)
    source = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    placeholder = b"X\x0b\x00\x00\x00PLACEHOLDER"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                assert data.count(placeholder) == 1
                data = data.replace(placeholder, b"]" * depth + b"a" * (depth - 1))
            z.writestr(info.filename, data)


def test_records_nested_past_the_stack_or_holding_lazy_views_are_one_line(tmp_path, capsys):
    from sbattn.cli import main
    from _runs import one_line
    deep = tmp_path / "deep.pth"
    _nested_record(deep, 200_000)
    assert main(["evaluate", str(deep), "--device", "cpu"]) == 2
    assert "nests its contents deeper than any file sbattn writes" in one_line(capsys.readouterr().err)
    for view in (torch.randn(3, dtype=torch.complex64).conj(), torch.randn(3, dtype=torch.complex64).conj().imag):
        lazy = tmp_path / "lazy.pth"
        torch.save({"format": 2, "state_dict": {"w": view}}, lazy)  # format 2: no checksum asked
        assert main(["evaluate", str(lazy), "--device", "cpu"]) == 2
        assert "w is a conjugate or negative view" in one_line(capsys.readouterr().err)


def test_a_fifo_at_a_runs_log_is_neither_waited_on_nor_written(tmp_path, capsys):
    """A FIFO planted at `<run>.log`: a lone run whose streams are closed (its words go to the log) finishes
    without waiting for a reader, and a `--jobs` suite refuses in one line, before it writes anything, instead of
    hanging."""
    from sbattn.cli import main
    from _runs import TINY, run_name
    name = run_name(*TINY, "--seed=0")
    lone = tmp_path / "lone"
    lone.mkdir()
    os.mkfifo(lone / f"{name}.log")
    args = " ".join([*TINY, "--seed=0", f"--output-dir={lone}"])
    done = subprocess.run(f"exec {sys.executable} -m sbattn train {args} >&- 2>&-", shell=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and (lone / f"{name}.json").is_file()
    assert stat.S_ISFIFO(os.lstat(lone / f"{name}.log").st_mode)  # left as it was
    suite, name = tmp_path / "suite", name.replace("tanh", "sigmoid")  # compare's SB: sigmoid
    suite.mkdir()
    os.mkfifo(suite / f"{name}.log")
    assert main(["compare", *TINY, "--attention=sb", "--seeds=2", "--jobs=2", f"--output-dir={suite}"]) != 0
    out = capsys.readouterr()
    assert f"{name}.log is not a regular file (it is a FIFO)" in one_line(out.err)
    assert sorted(p.name for p in suite.iterdir()) == [f"{name}.log"]  # refused before anything was written
