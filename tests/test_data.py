"""sbattn.data: every source on data generated here in its exact form, every error, safety and the cache."""

from __future__ import annotations

import io
import os
import pickle
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import sbattn.data as data
from sbattn.data import CLASSES, DataError, load_cifar10, load_fake
from sbattn.data.dataset import BATCHES_DIR, TRAIN_BATCHES
from sbattn.data.fake import FAKE_SIZES
from sbattn.data import cifar10, download, folders  # the modules whose globals the tests patch
from sbattn.data import cache as cache_module, official as official_module  # 'cache', 'official': fixtures here

sys.path.insert(0, str(Path(__file__).parent))  # the helpers beside this file, however pytest runs
from _datagen import (  # noqa: E402
    Expected, add_to_tar, batch_blob, encode, md5, official_files, rng_images, serve, settle, tree_files,
    write_official_archive, write_official_dir, write_tree, write_zip,
)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def load(path: Path, cache: Path, **kw: object) -> data.CIFAR10:
    return load_cifar10(path, cache_dir=cache, progress=False, **kw)  # type: ignore[arg-type]


def assert_same(got: data.CIFAR10, exp: Expected) -> None:
    assert got.train_images.dtype == np.uint8 and got.train_images.shape[1:] == (32, 32, 3)
    assert got.train_labels.dtype == np.int64 and got.test_labels.dtype == np.int64
    np.testing.assert_array_equal(got.train_images, exp.train_images)
    np.testing.assert_array_equal(got.train_labels, exp.train_labels)
    np.testing.assert_array_equal(got.test_images, exp.test_images)
    np.testing.assert_array_equal(got.test_labels, exp.test_labels)
    assert got.classes == exp.classes


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def expect_error(cache: Path, fn, *words: str) -> str:
    """fn() must raise a one-line DataError containing every word, and leave no cache behind."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)
    assert files_under(cache) == [], "a failed load left files in the cache"
    return msg


# ------------------------------------------------------------------------------- official batches


@pytest.mark.parametrize("style", ["py2", "py3", "str-keys"])
def test_official_dir_and_its_parent(tmp_path: Path, cache: Path, style: str) -> None:
    d, exp = write_official_dir(tmp_path / "data", style=style)
    for where in (d, d.parent):
        got = load(where, cache)
        assert_same(got, exp)
        assert str(d) in got.source


def test_official_layout_is_planar_rgb(tmp_path: Path, cache: Path) -> None:
    # One red, one green, one blue image: the rows are R plane, G plane, B plane.
    images = np.zeros((3, 32, 32, 3), np.uint8)
    for c in range(3):
        images[c, :, :, c] = 200
    files, _ = official_files(per_batch=3)
    files["data_batch_1"] = batch_blob(images, [0, 1, 2])
    d = tmp_path / BATCHES_DIR
    write_tree(d, files)
    got = load(d, cache)
    assert (got.train_images[:3].reshape(3, -1, 3).mean(1) == np.eye(3) * 200).all()


def test_meta_is_optional_and_names_classes(tmp_path: Path, cache: Path) -> None:
    d, exp = write_official_dir(tmp_path)
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.upper().encode() for c in CLASSES]}, protocol=2))
    assert load(d, cache).classes == [c.upper() for c in CLASSES]
    (d / "batches.meta").unlink()
    assert load(d, cache).classes == CLASSES


def test_official_archive(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    digest, exp = write_official_archive(archive)
    monkeypatch.setattr(download, "CIFAR10_MD5", digest)
    for where in (archive.parent, archive):
        got = load(where, cache)
        assert_same(got, exp)
        assert "MD5 verified" in got.source
    assert sorted(os.listdir(archive.parent)) == ["cifar-10-python.tar.gz"], "reading it must not unpack anything"


def test_official_archive_wrong_md5_refused_before_reading(tmp_path: Path, cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_official_archive(archive)
    for reader in (official_module, folders):  # every module that reads archives
        monkeypatch.setattr(reader, "_read_archive", lambda *a, **k: pytest.fail("read before the MD5 check"))
    expect_error(cache, lambda: load(tmp_path, cache), "checksum", download.CIFAR10_MD5, "--download")


# ------------------------------------------------------------------------------------- download


@pytest.fixture
def official(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, Expected]:
    src = tmp_path / "upstream.tar.gz"
    digest, exp = write_official_archive(src)
    monkeypatch.setattr(download, "CIFAR10_MD5", digest)
    return src.read_bytes(), exp


def assert_clean_download(root: Path) -> None:
    assert sorted(os.listdir(root)) == [BATCHES_DIR, "cifar-10-python.tar.gz"]
    assert sorted(os.listdir(root / BATCHES_DIR)) == sorted(["batches.meta", "test_batch", *TRAIN_BATCHES])


def test_download(tmp_path: Path, cache: Path, official, monkeypatch: pytest.MonkeyPatch) -> None:
    payload, exp = official
    root = tmp_path / "data"
    with serve(payload) as server:
        monkeypatch.setattr(download, "CIFAR10_URL", server.url)
        assert_same(load(root, cache, download=True), exp)
        assert len(server.requests) == 1 and "Range" not in server.requests[0]
        assert_clean_download(root)
        assert_same(load(root, cache, download=True), exp)
        assert len(server.requests) == 1, "a complete download must not be fetched again"


def test_download_resumes_a_part_file(tmp_path: Path, cache: Path, official, monkeypatch) -> None:
    payload, exp = official
    root = tmp_path / "data"
    root.mkdir()
    half = len(payload) // 2
    (root / "cifar-10-python.tar.gz.part").write_bytes(payload[:half])
    with serve(payload) as server:
        monkeypatch.setattr(download, "CIFAR10_URL", server.url)
        assert_same(load(root, cache, download=True), exp)
    assert server.requests[0]["Range"] == f"bytes={half}-"
    assert_clean_download(root)


def test_download_restarts_when_server_ignores_range(tmp_path: Path, cache: Path, official, monkeypatch) -> None:
    payload, exp = official
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz.part").write_bytes(payload[:100])
    with serve(payload, ranges=False) as server:
        monkeypatch.setattr(download, "CIFAR10_URL", server.url)
        assert_same(load(root, cache, download=True), exp)
    assert_clean_download(root)


def test_download_broken_off_then_resumed(tmp_path: Path, cache: Path, official, monkeypatch) -> None:
    payload, exp = official
    root = tmp_path / "data"
    cut = len(payload) // 3
    with serve(payload, cut_at=cut) as server:
        monkeypatch.setattr(download, "CIFAR10_URL", server.url)
        expect_error(cache, lambda: load(root, cache, download=True), "network", "--download", "resume")
    assert os.listdir(root) == ["cifar-10-python.tar.gz.part"], "only the .part may remain, never a final name"
    assert (root / "cifar-10-python.tar.gz.part").read_bytes() == payload[:cut]
    with serve(payload) as server:
        monkeypatch.setattr(download, "CIFAR10_URL", server.url)
        assert_same(load(root, cache, download=True), exp)
    assert server.requests[0]["Range"] == f"bytes={cut}-"
    assert_clean_download(root)


def test_download_part_longer_than_file_starts_over(tmp_path: Path, cache: Path, official, monkeypatch) -> None:
    payload, exp = official
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz.part").write_bytes(b"x" * (len(payload) + 10))
    with serve(payload) as server:
        monkeypatch.setattr(download, "CIFAR10_URL", server.url)
        assert_same(load(root, cache, download=True), exp)
    assert [r.get("Range") for r in server.requests] == [f"bytes={len(payload) + 10}-", None]


def test_download_unreachable(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(b"") as server:
        url = server.url  # the server is gone after this block: nothing listens there
    monkeypatch.setattr(download, "CIFAR10_URL", url)
    root = tmp_path / "data"
    msg = expect_error(cache, lambda: load(root, cache, download=True), "network", "--data-dir")
    assert url in msg
    assert files_under(root) == []


def test_download_checksum_mismatch_deletes_part(tmp_path: Path, cache: Path, official, monkeypatch) -> None:
    payload, _ = official
    monkeypatch.setattr(download, "CIFAR10_MD5", "0" * 32)
    root = tmp_path / "data"
    with serve(payload) as server:
        monkeypatch.setattr(download, "CIFAR10_URL", server.url)
        expect_error(cache, lambda: load(root, cache, download=True), "checksum", "--download")
    assert files_under(root) == []


def test_download_http_error(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(b"", status=404) as server:
        monkeypatch.setattr(download, "CIFAR10_URL", server.url)
        expect_error(cache, lambda: load(tmp_path / "d", cache, download=True), "HTTP 404", "--data-dir")
    assert files_under(tmp_path / "d") == []


def test_download_file_url(tmp_path: Path, cache: Path, official, monkeypatch: pytest.MonkeyPatch) -> None:
    payload, exp = official
    src = tmp_path / "mirror.tar.gz"
    src.write_bytes(payload)
    monkeypatch.setattr(download, "CIFAR10_URL", src.as_uri())
    assert_same(load(tmp_path / "data", cache, download=True), exp)
    assert_clean_download(tmp_path / "data")


def test_download_of_a_bad_archive_leaves_no_directory(tmp_path: Path, cache: Path, monkeypatch) -> None:
    files, _ = official_files()
    del files["test_batch"]
    src = tmp_path / "bad.tar.gz"
    add_to_tar(src, {f"{BATCHES_DIR}/{k}": v for k, v in files.items()})
    monkeypatch.setattr(download, "CIFAR10_MD5", md5(src))
    monkeypatch.setattr(download, "CIFAR10_URL", src.as_uri())
    root = tmp_path / "data"
    expect_error(cache, lambda: load(root, cache, download=True), "test_batch", "incomplete")
    assert os.listdir(root) == ["cifar-10-python.tar.gz"], "no half-unpacked directory may be left"


# -------------------------------------------------------------------------------- image folders


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("test_split", ["test", "val", "valid"])
def test_image_folder_dir(tmp_path: Path, cache: Path, fmt: str, test_split: str) -> None:
    files, exp = tree_files(fmt=fmt, test_split=test_split)
    root = write_tree(tmp_path / "tree", files)
    got = load(root, cache)
    assert_same(got, exp)
    assert f"{test_split}/" in got.source


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tgz"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_folder_archives(tmp_path: Path, cache: Path, kind: str, fmt: str) -> None:
    files, exp = tree_files(fmt=fmt)
    holder = tmp_path / "shared"
    holder.mkdir()
    archive = holder / f"cifar10-{fmt.lower()}.{kind}"
    if kind == "zip":
        write_zip(archive, files)
    else:
        add_to_tar(archive, files, mode="w" if kind == "tar" else "w:gz")
    for where in (archive, holder):  # the archive itself, or the folder that holds it
        assert_same(load(where, cache), exp)
    assert os.listdir(holder) == [archive.name], "nothing may be unpacked next to the archive"


def test_archive_with_top_folder_dir_entries_and_junk(tmp_path: Path, cache: Path) -> None:
    files, exp = tree_files()
    files = {f"cifar10/{k}": v for k, v in files.items()}
    files["cifar10/train/.DS_Store"] = b"junk"
    files["__MACOSX/cifar10/train/._x.png"] = b"junk"
    files["cifar10/README.txt"] = b"hello"
    archive = tmp_path / "a.tar.gz"
    add_to_tar(archive, files, dirs=["cifar10", "cifar10/train", "cifar10/test"])
    assert_same(load(archive, cache), exp)


def test_archive_internal_symlink_is_followed(tmp_path: Path, cache: Path) -> None:
    files, exp = tree_files()
    target = "train/" + sorted(CLASSES[:3])[0] + "/0000.png"
    link_name = "train/" + sorted(CLASSES[:3])[0] + "/0001.png"
    blob = files.pop(link_name)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        for name, b in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(b)
            tf.addfile(info, io.BytesIO(b))
        info = tarfile.TarInfo(link_name)
        info.type = tarfile.SYMTYPE
        info.linkname = "0000.png"
        tf.addfile(info)
    got = load(archive, cache)
    assert blob != files[target]
    np.testing.assert_array_equal(got.train_images[1], got.train_images[0])


def test_resize_option(tmp_path: Path, cache: Path) -> None:
    files, exp = tree_files(n_train=2, n_test=1)
    name = sorted(k for k in files if k.startswith("train/"))[0]
    big = np.zeros((64, 48, 4), np.uint8)
    big[..., 0], big[..., 3] = 255, 255  # red, opaque, RGBA
    files[name] = encode(big, "PNG")
    root = write_tree(tmp_path / "tree", files)
    msg = expect_error(cache, lambda: load(root, cache), name.split("/")[-1], "48x64", "--resize")
    assert "32x32" in msg
    got = load(root, cache, resize=True)
    assert (got.train_images[0] == [255, 0, 0]).all()
    np.testing.assert_array_equal(got.train_images[1:], exp.train_images[1:])


def test_greyscale_and_palette_convert_exactly(tmp_path: Path, cache: Path) -> None:
    files, _ = tree_files(n_train=2, n_test=1)
    grey = np.arange(1024, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    name = sorted(k for k in files if k.startswith("train/"))[0]
    buf = io.BytesIO()
    from PIL import Image
    Image.fromarray(grey, "L").save(buf, "PNG")
    files[name] = buf.getvalue()
    got = load(write_tree(tmp_path / "t", files), cache)
    np.testing.assert_array_equal(got.train_images[0], np.repeat(grey[..., None], 3, axis=2))


def test_decoding_in_a_process_pool(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folders, "_POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(folders, "_CHUNK", 3)
    files, exp = tree_files(n_train=5, n_test=3)
    assert_same(load(write_tree(tmp_path / "t", files), cache), exp)
    name = sorted(files)[-1]
    files[name] = b"not an image"
    expect_error(tmp_path / "cache2", lambda: load(write_tree(tmp_path / "u", files), tmp_path / "cache2"),
                 "cannot read image", name.split("/")[-1])


def _crash(items: object, resize: bool) -> None:
    os._exit(3)


def test_a_dying_decoder_process_is_a_data_error(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folders, "_POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(folders, "_decode_chunk", _crash)  # runs in the forked workers only
    files, _ = tree_files(n_train=2, n_test=1)
    expect_error(cache, lambda: load(write_tree(tmp_path / "t", files), cache), "process died")


# ----------------------------------------------------------------------------------------- errors


def test_nothing_found_lists_places(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "data").mkdir()
    msg = expect_error(cache, lambda: load(tmp_path / "data", cache), "--download", "--data-dir",
                       BATCHES_DIR, "cifar-10-python.tar.gz", "train/", ".zip")
    assert str(tmp_path / "data") in msg
    expect_error(cache, lambda: load(tmp_path / "missing", cache), "does not exist", "--download", "--data-dir")


def test_fake_is_never_a_fallback(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataError):
        load(tmp_path, cache)
    expect_error(cache, lambda: load_cifar10(tmp_path, dataset="cifar100", cache_dir=cache), "unknown dataset")


def test_not_an_archive(tmp_path: Path, cache: Path) -> None:
    f = tmp_path / "data_batch_1"
    f.write_bytes(b"x")
    expect_error(cache, lambda: load(f, cache), "not a dataset archive")


def test_several_archives_is_ambiguous(tmp_path: Path, cache: Path) -> None:
    files, _ = tree_files()
    write_zip(tmp_path / "a.zip", files)
    write_zip(tmp_path / "b.zip", files)
    expect_error(cache, lambda: load(tmp_path, cache), "several archives", "a.zip", "b.zip", "--data-dir")


@pytest.mark.parametrize("damage,words", [
    (lambda b: b[: len(b) // 2], ["truncated or corrupt", "data_batch_2"]),
    (lambda b: b"garbage" + b[7:], ["truncated or corrupt", "data_batch_2"]),
    (lambda b: b"", ["truncated or corrupt", "data_batch_2"]),
])
def test_truncated_or_corrupt_batch(tmp_path: Path, cache: Path, damage, words) -> None:
    d, _ = write_official_dir(tmp_path)
    blob = (d / "data_batch_2").read_bytes()
    (d / "data_batch_2").write_bytes(damage(blob))
    expect_error(cache, lambda: load(d, cache), *words, "--download")


def test_missing_batch(tmp_path: Path, cache: Path) -> None:
    d, _ = write_official_dir(tmp_path)
    (d / "data_batch_4").unlink()
    expect_error(cache, lambda: load(tmp_path, cache), "incomplete", "data_batch_4")


@pytest.mark.parametrize("obj,words", [
    ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0, 1, 2, 3]}, ["shape", "(4, 3000)", "3072"]),
    ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0, 1, 2, 3]}, ["shape", "uint8"]),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}, ["labels", "shape"]),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 10, 3]}, ["labels outside 0..9", "10"]),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, -1, 2, 3]}, ["labels outside 0..9"]),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, [1, 2], 2, 3]}, ["'labels' is not a list of integers"]),
    ({b"data": np.zeros((4, 3072), np.uint8)}, ["no 'data' or 'labels'"]),
    ([1, 2, 3], ["not a CIFAR-10 batch"]),
])
def test_bad_batch_contents(tmp_path: Path, cache: Path, obj, words) -> None:
    d, _ = write_official_dir(tmp_path)
    (d / "test_batch").write_bytes(pickle.dumps(obj, protocol=2))
    expect_error(cache, lambda: load(d, cache), "test_batch", *words)


def test_labels_nested_past_numpys_dimensions_are_one_line(tmp_path: Path, cache: Path) -> None:
    d, _ = write_official_dir(tmp_path)
    blob = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": "PLACEHOLDER"}, protocol=2)
    placeholder = b"X\x0b\x00\x00\x00PLACEHOLDER"
    assert blob.count(placeholder) == 1
    deep = 100_000  # a list in a list ..., built by the pickle's own opcodes (EMPTY_LIST, then APPEND)
    (d / "test_batch").write_bytes(blob.replace(placeholder, b"]" * deep + b"a" * (deep - 1)))
    expect_error(cache, lambda: load(d, cache), "test_batch", "'labels' is not a list of integers")


def test_corrupt_archives(tmp_path: Path, cache: Path) -> None:
    files, _ = tree_files()
    good = tmp_path / "good.tar.gz"
    add_to_tar(good, files)
    for name, blob in (("cut.tar.gz", good.read_bytes()[:-200]), ("junk.tgz", b"\x1f\x8b" + os.urandom(300)),
                       ("junk.zip", b"PK\x03\x04" + os.urandom(300)), ("empty.tar", b"")):
        p = tmp_path / name
        p.write_bytes(blob)
        expect_error(cache, lambda: load(p, cache), name)


def test_archive_without_a_tree(tmp_path: Path, cache: Path) -> None:
    p = tmp_path / "x.zip"
    write_zip(p, {"images/a.png": encode(rng_images(1, 0)[0], "PNG")})
    expect_error(cache, lambda: load(p, cache), "no train/<class>/")
    q = tmp_path / "renamed.tar.gz"
    files, _ = official_files()
    add_to_tar(q, {f"{BATCHES_DIR}/{k}": v for k, v in files.items()}, dirs=[BATCHES_DIR])
    expect_error(cache, lambda: load(q, cache), "cifar-10-python.tar.gz", "MD5")


def test_empty_class_folder(tmp_path: Path, cache: Path) -> None:
    files, _ = tree_files()
    root = write_tree(tmp_path / "t", files)
    (root / "test" / "zebra").mkdir()
    (root / "train" / "zebra").mkdir()
    expect_error(cache, lambda: load(root, cache), "empty", "zebra")
    archive = tmp_path / "t.tar.gz"
    add_to_tar(archive, files, dirs=["train/zebra", "test/zebra"])
    expect_error(cache, lambda: load(archive, cache), "empty", "zebra")


def test_different_class_sets(tmp_path: Path, cache: Path) -> None:
    files, _ = tree_files()
    files = {k.replace("test/bird/", "test/plane/"): v for k, v in files.items()}
    root = write_tree(tmp_path / "t", files)
    expect_error(cache, lambda: load(root, cache), "different class", "bird", "plane")
    expect_error(cache, lambda: load(write_zip(tmp_path / "t.zip", files), cache), "different class")


@pytest.mark.parametrize("blob", [b"not an image at all", b"", "truncated-png", "truncated-jpeg"])
def test_unreadable_image(tmp_path: Path, cache: Path, blob) -> None:
    files, _ = tree_files(fmt="JPEG" if blob == "truncated-jpeg" else "PNG")
    name = sorted(files)[len(files) // 2]
    files[name] = files[name][: len(files[name]) // 2] if isinstance(blob, str) else blob
    root = write_tree(tmp_path / "t", files)
    expect_error(cache, lambda: load(root, cache), "cannot read image", name)
    archive = tmp_path / "t.tar"
    add_to_tar(archive, files, mode="w")
    expect_error(cache, lambda: load(archive, cache), "cannot read image", name)


# ----------------------------------------------------------------------------------------- safety


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path, cache: Path) -> None:
    d, _ = write_official_dir(tmp_path)
    marker = tmp_path / "pwned"
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    expect_error(cache, lambda: load(d, cache), "data_batch_3", "system", "refusing")
    assert not marker.exists()
    for proto in (0, 4, 5):  # every protocol goes through the same gate
        (d / "data_batch_3").write_bytes(pickle.dumps(_Evil(marker), protocol=proto))
        expect_error(cache, lambda: load(d, cache), "system")
    assert not marker.exists()


def test_pickle_of_other_classes_refused(tmp_path: Path, cache: Path) -> None:
    import collections
    d, _ = write_official_dir(tmp_path)
    (d / "batches.meta").write_bytes(pickle.dumps(collections.OrderedDict(label_names=CLASSES), protocol=2))
    expect_error(cache, lambda: load(d, cache), "collections.OrderedDict")
    (d / "batches.meta").write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00base64\x86R.")
    expect_error(cache, lambda: load(d, cache), "batches.meta", "corrupt")


def _tar_with(path: Path, info: tarfile.TarInfo, blob: bytes = b"") -> Path:
    files, _ = tree_files(n_train=1, n_test=1)
    with tarfile.open(path, "w") as tf:
        for name, b in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(b)
            tf.addfile(ti, io.BytesIO(b))
        info.size = len(blob) if info.isfile() else 0
        tf.addfile(info, io.BytesIO(blob) if info.isfile() else None)
    return path


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("entry,words", [
    (_entry("../../evil.png"), ["leads out", "'..'"]),
    (_entry("train/cat/../../../evil.png"), ["leads out"]),
    (_entry("/tmp/sbattn-evil.png"), ["absolute path"]),
    (_entry("train/cat/link.png", tarfile.SYMTYPE, "../../../../etc/passwd"), ["points outside"]),
    (_entry("train/cat/link.png", tarfile.SYMTYPE, "/etc/passwd"), ["points outside"]),
    (_entry("train/cat/hard.png", tarfile.LNKTYPE, "../outside.png"), ["points outside"]),
    (_entry("train/cat/dev", tarfile.CHRTYPE), ["device"]),
    (_entry("train/cat/fifo", tarfile.FIFOTYPE), ["device"]),
])
def test_unsafe_tar_entries_refused(tmp_path: Path, cache: Path, entry, words) -> None:
    archive = _tar_with(tmp_path / "evil.tar", entry, b"evil")
    expect_error(cache, lambda: load(archive, cache), "evil.tar", "refusing", *words)
    assert not Path("/tmp/sbattn-evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


@pytest.mark.parametrize("name,words", [("../evil.png", ["leads out"]), ("/abs/evil.png", ["absolute"]),
                                        ("..\\..\\evil.png", ["leads out"]), ("C:/evil.png", ["absolute"])])
def test_unsafe_zip_entries_refused(tmp_path: Path, cache: Path, name: str, words) -> None:
    files, _ = tree_files(n_train=1, n_test=1)
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for k, v in files.items():
            zf.writestr(k, v)
        info = zipfile.ZipInfo("x")
        info.filename = name  # ZipInfo() would clean the name; attackers' tools do not
        zf.writestr(info, b"evil")
    expect_error(cache, lambda: load(archive, cache), "refusing", *words)


def test_zip_symlink_out_refused(tmp_path: Path, cache: Path) -> None:
    files, _ = tree_files(n_train=1, n_test=1)
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for k, v in files.items():
            zf.writestr(k, v)
        info = zipfile.ZipInfo("train/bird/link.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "../../../etc/passwd")
    expect_error(cache, lambda: load(archive, cache), "points outside")


# ------------------------------------------------------------------------------------------ cache


def _no_decode(*a: object, **k: object) -> None:
    raise AssertionError("decoded again although the cache was valid")


@pytest.mark.parametrize("form", ["batches", "official-archive", "folder", "folder-archive"])
def test_cache_reuse_and_invalidation(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    if form == "batches":
        where, exp = write_official_dir(tmp_path / "src")
        settle(where)
        change = lambda: (where / "test_batch").write_bytes(batch_blob(exp.test_images[::-1], exp.test_labels[::-1]))
    elif form == "official-archive":
        where = tmp_path / "cifar-10-python.tar.gz"
        digest, exp = write_official_archive(where)
        monkeypatch.setattr(download, "CIFAR10_MD5", digest)
        change = lambda: monkeypatch.setattr(download, "CIFAR10_MD5", write_official_archive(where, seed=1)[0])
    else:
        files, exp = tree_files()
        if form == "folder":
            where = settle(write_tree(tmp_path / "tree", files))
            first = where / sorted(files)[0]
            change = lambda: first.write_bytes(encode(255 - exp.test_images[0], "PNG"))
        else:
            where = write_zip(tmp_path / "tree.zip", files)
            files2 = dict(files)
            files2[sorted(files)[0]] = encode(255 - exp.test_images[0], "PNG")
            change = lambda: write_zip(where, files2)
    first_load = load(where, cache)
    assert_same(first_load, exp)
    assert len([f for f in files_under(cache) if f.endswith(".npz")]) == 1
    with monkeypatch.context() as m:
        m.setattr(cifar10, "_decode", _no_decode)
        again = load(where, cache)
    assert_same(again, exp)
    assert "cached" in again.source
    change()
    with monkeypatch.context() as m:
        m.setattr(cifar10, "_decode", _no_decode)
        with pytest.raises(AssertionError, match="decoded again"):
            load(where, cache)
    fresh = load(where, cache)
    assert "cached" not in fresh.source
    assert not all(np.array_equal(getattr(fresh, k), getattr(first_load, k))
                   for k in ("train_images", "test_images", "train_labels", "test_labels"))
    assert len(files_under(cache)) == 1, "one cache file per source, replaced in place"


def test_cache_keeps_options_apart(tmp_path: Path, cache: Path) -> None:
    files, _ = tree_files()
    root = settle(write_tree(tmp_path / "t", files))
    load(root, cache)
    load(root, cache, resize=True)
    assert len(files_under(cache)) == 2


def test_added_and_removed_files_invalidate(tmp_path: Path, cache: Path) -> None:
    files, exp = tree_files()
    root = settle(write_tree(tmp_path / "t", files))
    assert len(load(root, cache).train_images) == len(exp.train_images)
    extra = root / "train" / "bird" / "9999.png"
    extra.write_bytes(encode(rng_images(1, 9)[0], "PNG"))
    assert len(load(root, cache).train_images) == len(exp.train_images) + 1
    settle(root)
    assert len(load(root, cache).train_images) == len(exp.train_images) + 1
    extra.unlink()
    assert_same(load(root, cache), exp)


def test_freshly_written_sources_are_not_cached_yet(tmp_path: Path, cache: Path) -> None:
    files, exp = tree_files()
    root = write_tree(tmp_path / "t", files)
    assert_same(load(root, cache), exp)
    assert files_under(cache) == []
    settle(root)
    assert_same(load(root, cache), exp)
    assert len(files_under(cache)) == 1


def test_damaged_cache_is_a_miss(tmp_path: Path, cache: Path) -> None:
    files, exp = tree_files()
    root = settle(write_tree(tmp_path / "t", files))
    load(root, cache)
    (npz,) = cache.iterdir()
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable cache"):
        assert_same(load(root, cache), exp)
    assert_same(load(root, cache), exp)


def test_failed_cache_write_leaves_nothing(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, exp = tree_files()
    root = settle(write_tree(tmp_path / "t", files))

    def savez_then_fail(f, **arrays):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.np, "savez", savez_then_fail)
    with pytest.warns(UserWarning, match="could not write the cache"):
        assert_same(load(root, cache), exp)
    assert files_under(cache) == []


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SBATTN_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert data.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SBATTN_CACHE")
    assert data.default_cache_dir() == tmp_path / "b" / "sbattn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "sbattn"


# ------------------------------------------------------------------------------------------- fake


def test_fake_is_deterministic_and_shaped() -> None:
    a, b = load_fake(), load_cifar10(dataset="fake")
    assert a.train_images.shape == (FAKE_SIZES[0], 32, 32, 3)
    assert a.test_images.shape == (FAKE_SIZES[1], 32, 32, 3)
    assert a.train_images.dtype == np.uint8 and a.train_labels.dtype == np.int64
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert "fake" in a.source and len(a.classes) == 10
    assert np.bincount(a.train_labels, minlength=10).min() >= FAKE_SIZES[0] // 10
    c = load_fake(n_train=50, n_test=20, seed=3)
    assert c.train_images.shape[0] == 50 and c.test_images.shape[0] == 20
    assert not np.array_equal(c.train_images[:20], load_fake(50, 20, seed=4).train_images[:20])


def test_fake_has_a_learnable_signal() -> None:
    d = load_fake()
    # Nearest class mean on 8x8-pooled pixels, fitted on train, scored on test.
    def feats(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), 8, 4, 8, 4, 3).mean((2, 4)).reshape(len(x), -1) / 255
    ftr, fte = feats(d.train_images), feats(d.test_images)
    means = np.stack([ftr[d.train_labels == k].mean(0) for k in range(10)])
    pred = ((fte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    accuracy = (pred == d.test_labels).mean()
    assert accuracy > 0.5, accuracy
