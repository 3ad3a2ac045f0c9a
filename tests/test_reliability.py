"""Nothing lost, nothing trusted blindly: finished runs left alone, one process per run, file-system failures as one
line with the last good state kept, damaged or crafted checkpoints refused, a resumed run's data checked."""
import errno
import json
import os
import shlex
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import sbattn
from sbattn import TrainConfig
from sbattn.cli import main
from sbattn.records import RunPaths, read_finished
from sbattn.records.checkpoint import read_record
from sbattn.records.rundir import run_lock
from sbattn.train.loop import train

sys.path.insert(0, str(Path(__file__).parent))
from _datagen import tree_files, write_tree  # noqa: E402
from _runs import TINY, copy_of, finished_output, one_line, run_name, snapshot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = run_name(*TINY)  # the tiny run without a seed
INTERRUPTED = run_name(*TINY, "--epochs=2", "--seed=0")  # the `interrupted` fixture's run
RUN_FILES = (".pth", ".json", ".csv", ".png")


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """An output directory holding one finished tiny run without a seed (a random one, as a user's first run)."""
    return finished_output(tmp_path_factory.mktemp("finished"), TINY)


# ------------------------------------------------------------------------------ finished work is kept


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_a_finished_run_is_reported_and_left_alone(finished, tmp_path, capsys, extra):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", *TINY, f"--output-dir={out}", *extra]) == 0
    said = capsys.readouterr().out
    summary = json.loads((out / f"{NAME}.json").read_text())["summary"]
    assert f"{NAME} finished earlier: final test accuracy {100 * summary['final_eval_acc']:.2f}%" in said
    assert "nothing was trained" in said and said.count("\n") == 1
    assert snapshot(out) == before  # not one byte of the run's files nor of results.txt changed


def test_overwrite_moves_the_finished_run_aside_then_trains_afresh(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    assert main(["train", *TINY, f"--output-dir={out}", "--overwrite"]) == 0
    assert "moved the earlier files" in capsys.readouterr().out
    [aside] = (out / "replaced").iterdir()
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == {f"{NAME}{s}": before[f"{NAME}{s}"] for s in RUN_FILES}
    assert all((out / f"{NAME}{s}").exists() for s in RUN_FILES)
    assert len((out / "results.txt").read_text().splitlines()) == 2  # the old line, and the new run's


def test_overwrite_never_moves_a_run_through_a_link_at_replaced(finished, tmp_path, capsys):
    out, elsewhere = copy_of(finished, tmp_path), tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "replaced").symlink_to(elsewhere)
    before = snapshot(out)
    assert main(["train", *TINY, f"--output-dir={out}", "--overwrite"]) == 2
    assert f"{out / 'replaced'} is a link: --overwrite moves" in one_line(capsys.readouterr().err)
    assert snapshot(out) == before and list(elsewhere.iterdir()) == []


def test_a_finished_run_of_another_recipe_is_refused(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    # the same name (a name tells recipes apart, not the precision they were computed in)
    assert main(["train", *TINY, f"--output-dir={out}", "--precision=bf16"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "finished run of another recipe (precision 'fp32' there, 'bf16' now)" in err and "--overwrite" in err
    assert snapshot(out) == before


def test_a_second_process_on_the_same_run_refuses_in_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with run_lock(RunPaths(out, NAME)):  # this process trains the run, as far as the other can tell
        proc = run_cli("-m", "sbattn", "train", *TINY, f"--output-dir={out}")
    assert proc.returncode == 2, proc.stderr
    err = one_line(proc.stderr)
    assert f"another process (pid {os.getpid()}) is training {NAME}" in err
    assert not (out / f"{NAME}.json").exists() and not (out / f"{NAME}.lock").exists()


def test_temporaries_of_a_killed_save_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / f".{NAME}.ckpt.k1ll3d_1.tmp", out / f".{NAME}.pth.k1ll3d_2.tmp"]
    others = [out / f".{NAME}_seed1.ckpt.k1ll3d_3.tmp", out / "notes.tmp"]  # another run's, and not ours
    for p in stale + others:
        p.write_bytes(b"half a checkpoint")
    config = TrainConfig(device="cpu", dataset="fake", width=0.0625, batch_size=32, precision="fp32", epochs=1,
                         milestones=[1], output_dir=str(out))
    assert train(config, quiet=True).exit_code == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)


# ------------------------------------------------------------------------------- file-system failures


def private_mount_prefix() -> list[str] | None:
    """A command prefix that runs in a mount namespace of its own (where a tmpfs may be mounted), or None."""
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        try:
            ok = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True,
                                timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return prefix
    return None


PRIVATE = private_mount_prefix()


def run_private(script: str) -> subprocess.CompletedProcess:
    """A shell script in a mount namespace of its own: what it mounts is gone when it ends."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*PRIVATE, "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(PRIVATE is None, reason="cannot mount a tmpfs in a mount namespace here")
def test_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path):
    name = run_name(*TINY, "--epochs=6", "--milestones=[5]", "--seed=0")
    out = tmp_path / "small-disk"
    out.mkdir()
    # A 2 MB tmpfs: the first checkpoint is written, then the disk is filled, so the next save meets ENOSPC.
    script = f"""
mount -t tmpfs -o size=2m tmpfs {out}
{sys.executable} -m sbattn train {' '.join(TINY)} --epochs=6 --milestones=[5] --seed=0 --output-dir={out} &
trainer=$!
while [ ! -e {out}/{name}.ckpt ] && kill -0 $trainer 2>/dev/null; do sleep 0.02; done
dd if=/dev/zero of={out}/filler bs=64k 2>/dev/null
wait $trainer; echo "exit $?"
ls -a {out}
{sys.executable} -c "import torch; print('epoch', torch.load('{out}/{name}.ckpt', weights_only=True)['epoch'])"
"""
    proc = run_private(script)
    assert "exit 1" in proc.stdout, (proc.stdout, proc.stderr)
    err = one_line(proc.stderr)
    assert "No space left on device" in err and f"the last good checkpoint {out}/{name}.ckpt is kept" in err
    assert "--resume" in err
    assert ".tmp" not in proc.stdout  # the half-written temporary file is gone
    assert "epoch " in proc.stdout  # the last good checkpoint loads


def test_full_disk_simulated_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    name = run_name(*TINY, "--epochs=3", "--milestones=[2]", "--seed=0")
    import sbattn.train.state as state_module
    real, saves = state_module.save_checkpoint, []

    def disk_fills_after_the_first(path, state):
        saves.append(path)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, state)

    monkeypatch.setattr(state_module, "save_checkpoint", disk_fills_after_the_first)
    out = tmp_path / "out"
    argv = ["train", *TINY, "--epochs=3", "--milestones=[2]", "--seed=0", f"--output-dir={out}", "--overwrite"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/sbattn", *argv])
    assert main(argv) == 1
    err = one_line(capsys.readouterr().err)
    assert "No space left on device" in err and "last good checkpoint" in err
    assert read_record(out / f"{name}.ckpt")["epoch"] == 1
    resume = shlex.split(err.split("resume with: ")[1])
    assert resume[:2] == ["sbattn", "train"] and "--overwrite" not in resume  # that would start afresh once more
    monkeypatch.setattr(state_module, "save_checkpoint", real)  # room made
    assert main(resume[1:]) == 0
    summary = read_finished(out / f"{name}.json").summary
    assert summary["config"]["epochs"] == 3 and len(summary["earlier_sessions"]) == 1  # continued, not restarted


def test_results_txt_a_directory_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import sbattn.train.loop as start
    out = tmp_path / "out"
    (out / "results.txt").mkdir(parents=True)
    monkeypatch.setattr(start, "load_cifar10", lambda *a, **k: pytest.fail("data loaded before the check"))
    assert main(["train", *TINY, f"--output-dir={out}"]) == 2
    assert "results.txt is not a regular file" in one_line(capsys.readouterr().err)


@pytest.mark.skipif(PRIVATE is None and os.geteuid() == 0, reason="root writes read-only files; no namespace here")
def test_results_txt_read_only_is_refused_before_training(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    results = out / "results.txt"
    results.write_text("an earlier run's line\n")
    train_cmd = f"{sys.executable} -m sbattn train {' '.join(TINY)} --output-dir={out}"
    if PRIVATE is not None:  # a read-only bind mount: read-only for root too
        proc = run_private(f"mount --bind {results} {results} && mount -o remount,ro,bind {results} || exit 77\n"
                           f"{train_cmd}")
        if proc.returncode == 77:
            pytest.skip(f"cannot mount a file read-only here: {proc.stderr.strip()}")
    else:
        results.chmod(0o444)
        proc = run_cli("-m", "sbattn", "train", *TINY, f"--output-dir={out}")
    assert proc.returncode == 2, proc.stderr
    assert "results.txt is not writable" in one_line(proc.stderr)
    assert not (out / f"{NAME}.ckpt").exists() and not (out / f"{NAME}.pth").exists()


def test_results_txt_failing_at_the_end_keeps_the_checkpoint_and_resume_finishes(tmp_path, monkeypatch, capsys):
    name = run_name(*TINY, "--seed=0")
    import sbattn.train.loop as loop
    out = tmp_path / "out"
    real_finish = loop._finish

    def directory_in_the_way(run, *args):
        run.paths.results.mkdir()  # where the result line goes, after the start's check
        return real_finish(run, *args)

    monkeypatch.setattr(loop, "_finish", directory_in_the_way)
    argv = ["train", *TINY, "--seed=0", f"--output-dir={out}"]
    assert main(argv) == 1
    err = one_line(capsys.readouterr().err)
    assert f"cannot write {out}/results.txt" in err and "checkpoint" in err and "--resume" in err
    checkpoint = out / f"{name}.ckpt"
    assert checkpoint.exists() and not (out / f"{name}.json").exists()  # not finished: resumable
    trained = read_record(checkpoint)["history"]

    monkeypatch.setattr(loop, "_finish", real_finish)
    (out / "results.txt").rmdir()
    monkeypatch.setattr(loop, "Epoch", lambda *a, **k: pytest.fail("trained again"))
    assert main([*argv, "--resume"]) == 0
    record = json.loads((out / f"{name}.json").read_text())
    assert record["summary"]["complete"] and record["history"] == trained
    assert len((out / "results.txt").read_text().splitlines()) == 1 and not checkpoint.exists()


def test_run_json_is_strict_even_when_a_loss_is_not_finite(tmp_path, monkeypatch):
    import sbattn.train.epoch as pipeline
    from sbattn.train.evaluation import Evaluation
    # Every evaluation (the epoch's and the final one) with a non-finite loss.
    monkeypatch.setattr(pipeline, "evaluate", lambda *a, **k: Evaluation(float("nan"), 0.25, float("inf"), 0.25))
    config = TrainConfig(device="cpu", dataset="fake", width=0.0625, batch_size=32, precision="fp32", epochs=1,
                         milestones=[1], output_dir=str(tmp_path))
    assert train(config, quiet=True).exit_code == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    record = json.loads((tmp_path / f"{NAME}.json").read_text(), parse_constant=refuse)
    assert record["history"][0]["eval_loss"] is None and record["summary"]["final_eval_loss"] is None
    assert record["history"][0]["eval_loss_batch_mean"] is None and record["summary"]["final_eval_loss_batch_mean"] is None


def test_a_suite_table_that_cannot_be_written_is_one_line(tmp_path, capsys):
    for attention, acc in (("none", 0.5), ("sb", 0.6)):  # two finished runs, as train() records them
        config = TrainConfig(attention=attention, seed=0, device="cpu", dataset="fake", epochs=1, output_dir=str(tmp_path))
        history = [{"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": acc, "eval_loss": 1.0, "eval_acc": acc,
                    "seconds": 1.0, "images_per_sec": 1.0}]
        summary = {"complete": True, "run": config.run_name, "config": config.to_dict(), "final_eval_acc": acc,
                   "params": 1, "train_seconds": 1.0}
        (tmp_path / f"{config.run_name}.json").write_text(json.dumps({"summary": summary, "history": history}))
    (tmp_path / "compare.md").mkdir()  # a directory where the table goes
    assert main(["report", str(tmp_path)]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"cannot write {tmp_path}/compare.md (Is a directory)" in err and "sbattn report" in err


# -------------------------------------------------------------------------- damaged or crafted files


def flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor stored in a torch.save file."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    blob = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    blob[start + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(blob))


def fail_at_the_finish(monkeypatch) -> None:
    """Stop a run after its last epoch's checkpoint, before its files are written: an unfinished run."""
    import sbattn.train.loop as loop
    monkeypatch.setattr(loop, "_finish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """An output directory holding the checkpoint of a tiny run after its two epochs, not yet finished."""
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as monkeypatch:
        fail_at_the_finish(monkeypatch)
        assert main(["train", *TINY, "--epochs=2", "--seed=0", f"--output-dir={out}"]) == 130
    return out


def test_a_checkpoint_with_a_flipped_byte_is_refused_not_resumed(interrupted, tmp_path, capsys):
    out = copy_of(interrupted, tmp_path)
    checkpoint = out / f"{INTERRUPTED}.ckpt"
    flip_a_tensor_byte(checkpoint)
    before = checkpoint.read_bytes()
    assert main(["train", *TINY, "--epochs=2", "--seed=0", f"--output-dir={out}", "--resume"]) == 2
    assert "is damaged: its contents do not match the checksum" in one_line(capsys.readouterr().err)
    assert checkpoint.read_bytes() == before


def test_a_checkpoint_stripped_of_its_checksum_is_refused_and_one_from_before_checksums_resumes(interrupted,
                                                                                                tmp_path, capsys):
    """An edit hidden by deleting the checksum is refused; a checkpoint of format 2 (sbattn 0.1.0 wrote them
    without a checksum) resumes, and the run says it had none."""
    out = copy_of(interrupted, tmp_path)
    checkpoint = out / f"{INTERRUPTED}.ckpt"
    record = torch.load(checkpoint, weights_only=True)
    record.pop("checksum")
    record["model"]["classifier.2.bias"] += 1.0
    torch.save(record, checkpoint)
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs=2", "--seed=0", f"--output-dir={out}", "--resume"]) == 2
    assert "has no checksum, which every file of its format 3 carries" in one_line(capsys.readouterr().err)
    torch.save({**record, "format": 2}, checkpoint)
    assert main(["train", *TINY, "--epochs=2", "--seed=0", f"--output-dir={out}", "--resume"]) == 0
    assert "has no checksum (format 2, from before checkpoints were sealed): resumed as it is" in capsys.readouterr().out


def test_weights_with_a_flipped_byte_are_refused_by_evaluate(finished, tmp_path, capsys):
    weights = copy_of(finished, tmp_path) / f"{NAME}.pth"
    flip_a_tensor_byte(weights)
    assert main(["evaluate", str(weights), "--device", "cpu"]) == 2
    assert "is damaged" in one_line(capsys.readouterr().err)


def rewrite(path: Path, change) -> None:
    """A crafted file: the record changed and sealed again with sbattn's own seal(), as a forger would (a file of the
    current format without its checksum is refused as stripped before any of its fields are read)."""
    from sbattn.records.integrity import seal
    record = torch.load(path, weights_only=True)
    record.pop("checksum")
    change(record)
    torch.save(seal(record), path)


def crafted_model(record):
    record["model"] = sbattn.create_model("resnet20", attention="sb", width=0.25).state_dict()  # another architecture


@pytest.mark.parametrize("change, words", [
    (crafted_model, "weights do not fit this run's model"),
    (lambda r: r["rng"][0].update(torch=torch.zeros(3, dtype=torch.uint8)), "cannot restore its random state"),
    (lambda r: r["rng"][0].update(augment="not a state"), "random states are malformed"),
    (lambda r: r.update(history=[{"epoch": 1, "lr": "fast"}]), "history is not 2 epoch(s)"),
    (lambda r: r.update(step=10**9, partial={"loss": torch.zeros(()), "correct": torch.zeros(()), "seen": 3,
                                              "seconds": 1.0}), "past the 32 steps of an epoch"),
    (lambda r: r.update(step=32, partial={"loss": torch.zeros(()), "correct": torch.zeros(()), "seen": 3,
                                          "seconds": 1.0}), "past the 32 steps of an epoch"),  # one past the last
    (lambda r: r.update(step=3, partial=[]), "interrupted epoch's sums are malformed"),
    (lambda r: r["history"][0].update(lr=torch.zeros(2)), "history is not 2 epoch(s)"),  # a tensor of one number
    (lambda r: r.update(model=[1, 2]), "weights are not a state dict of tensors"),
    (lambda r: r.update(model={"classifier.2.bias": 1}), "weights are not a state dict of tensors"),
    (lambda r: r.update(layout="bogus"), "its layout 'bogus' is not one of"),
    (lambda r: r.update(layout=[5]), "its layout [5] is not one of"),
    (lambda r: r.update(provenance=5), "its provenance 5 is not a list of the sessions"),
    (lambda r: r.update(epoch=7), "epoch 7 is not one of 0..2"),
    (lambda r: r["model"].update({"classifier.2.bias": torch.full((10,), float("nan"))}), "non-finite values"),
    (lambda r: r["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(2)), "momenta do not fit"),
    (lambda r: r["scheduler"].update(last_epoch=5), "schedule stands at epoch 5"),
])
def test_a_checkpoint_with_the_right_keys_and_wrong_contents_is_refused(interrupted, tmp_path, capsys, change,
                                                                        words):
    out = copy_of(interrupted, tmp_path)
    checkpoint = out / f"{INTERRUPTED}.ckpt"
    rewrite(checkpoint, change)
    assert main(["train", *TINY, "--epochs=2", "--seed=0", f"--output-dir={out}", "--resume"]) == 2
    assert words in one_line(capsys.readouterr().err)


def test_weights_claiming_a_huge_model_are_refused_before_it_is_built(finished, tmp_path, capsys, monkeypatch):
    import sbattn.records.checkpoint as checkpoint_module
    weights = copy_of(finished, tmp_path) / f"{NAME}.pth"
    rewrite(weights, lambda r: r["config"].update(width=8.0))  # 519 million parameters, 2 GB; the file is 174 KB
    real = checkpoint_module.create_model

    def only_on_meta(*args, **kwargs):
        assert torch.get_default_device().type == "meta", "the model was built before its weights were checked"
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "create_model", only_on_meta)
    assert main(["evaluate", str(weights), "--device", "cpu"]) == 2
    assert "weights do not fit its vgg16 model" in one_line(capsys.readouterr().err)


def test_a_compressed_file_is_refused_before_it_is_unpacked(finished, tmp_path, capsys):
    weights = copy_of(finished, tmp_path) / f"{NAME}.pth"
    with zipfile.ZipFile(weights) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(weights, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in entries:
            z.writestr(name, blob)
    assert main(["evaluate", str(weights), "--device", "cpu"]) == 2
    assert "compressed entries" in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------- the data of a run


def folder_run(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--device=cpu", f"--data-dir={data_dir}", f"--cache-dir={out / 'cache'}", "--width=0.0625",
            "--batch_size=4", "--precision=fp32", "--epochs=2", "--milestones=[1]", "--seed=0", f"--output-dir={out}",
            *extra]


@pytest.mark.parametrize("other, words", [
    ({"seed": 1}, "was trained on other data"),
    ({"classes": ["cat", "dog", "emu"]}, "was trained on the classes [airplane, automobile, bird] (3)"),
])
def test_resume_with_other_data_is_refused(tmp_path, capsys, monkeypatch, other, words):
    first = write_tree(tmp_path / "first", tree_files()[0])
    second = write_tree(tmp_path / "second", tree_files(**other)[0])
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        fail_at_the_finish(patched)
        assert main(folder_run(first, out)) == 130
    capsys.readouterr()
    checkpoint = next(out.glob("*.ckpt"))
    before = checkpoint.read_bytes()
    assert main(folder_run(second, out, "--resume")) == 2
    assert words in one_line(capsys.readouterr().err)
    assert checkpoint.read_bytes() == before
    assert main(folder_run(first, out, "--resume")) == 0  # its own data: it resumes


def test_evaluate_refuses_data_of_another_number_of_classes(finished, tmp_path, capsys):
    folder = write_tree(tmp_path / "three", tree_files()[0])
    weights = finished / f"{NAME}.pth"
    assert main(["evaluate", str(weights), "--device", "cpu", "--dataset", "cifar10", "--data-dir", str(folder),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "classifies 10 classes" in one_line(capsys.readouterr().err)


def test_evaluate_refuses_data_of_other_class_names_unless_told(finished, tmp_path, capsys):
    """The same number of classes under other names is another task: refused as --resume refuses it, unless
    --other-classes says the data's i-th class is the model's i-th."""
    folder = write_tree(tmp_path / "ten", tree_files(classes=[f"kind{i}" for i in range(10)], n_train=1, n_test=1)[0])
    command = ["evaluate", str(finished / f"{NAME}.pth"), "--device", "cpu", "--dataset", "cifar10", "--data-dir",
               str(folder), "--cache-dir", str(tmp_path / "cache")]
    assert main(command) == 2
    assert "was trained on the classes" in one_line(capsys.readouterr().err)
    assert main([*command, "--other-classes"]) == 0
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("field, value", [("data_dir", 5), ("cache_dir", ["x"]), ("eval_batch_size", "x"),
                                          ("eval_batch_size", 0)])
def test_evaluate_refuses_a_recorded_option_that_is_no_value_it_takes(finished, tmp_path, capsys, field, value):
    weights = copy_of(finished, tmp_path) / f"{NAME}.pth"
    rewrite(weights, lambda r: r["config"].update({field: value}))
    capsys.readouterr()
    assert main(["evaluate", str(weights), "--device", "cpu"]) == 2
    assert f"records {field}={value!r}, not a value it takes" in one_line(capsys.readouterr().err)


def test_a_checkpoint_holds_the_fields_its_schema_declares_and_an_older_one_is_upgraded(interrupted, tmp_path):
    """records/schema.py's table is what a run saves and what a resume requires: a checkpoint a run wrote holds
    every required field and nothing undeclared; a run cannot save a field the table lacks; an older file without
    the fields added since reads as if it had them, at their defaults."""
    from sbattn.records.schema import CHECKPOINT_FIELDS, REQUIRED, check_saved, upgrade
    record = torch.load(interrupted / f"{INTERRUPTED}.ckpt", weights_only=True)
    fields = record.keys() - {"format", "checksum"}
    assert REQUIRED <= fields <= CHECKPOINT_FIELDS.keys()
    check_saved({k: record[k] for k in fields})
    with pytest.raises(ValueError, match=r"undeclared \['momentum'\]"):
        check_saved({**{k: record[k] for k in fields}, "momentum": 0.9})
    with pytest.raises(ValueError, match=r"missing \['rng'\]"):
        check_saved({k: record[k] for k in fields if k != "rng"})
    older = {k: v for k, v in record.items() if k not in ("layout", "provenance", "data")}
    upgraded = upgrade(older)
    assert (upgraded["layout"], upgraded["provenance"], upgraded["data"]) == (None, [], None)
    assert "lookahead" not in upgraded and "layout" not in older  # only what older files lack; the input unchanged


def test_a_resume_refuses_a_checkpoint_without_a_required_field(interrupted, tmp_path, capsys):
    out = copy_of(interrupted, tmp_path)
    rewrite(out / f"{INTERRUPTED}.ckpt", lambda r: r.pop("scaler"))
    assert main(["train", *TINY, "--epochs=2", "--seed=0", f"--output-dir={out}", "--resume"]) == 2
    assert "is not a training checkpoint (it lacks scaler)" in one_line(capsys.readouterr().err)
