"""Records that lie: a finished run's JSON or a weights file edited by hand (fields of the wrong type or out of
range, impossible accuracies, unknown attention kinds, a stripped checksum, a view claiming more than its storage,
terminal escapes in names), and a finished run whose JSON is damaged; each is refused in one line, never believed,
never trained over."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from sbattn.cli import main
from sbattn.errors import CheckpointError
from sbattn.records import integrity
from sbattn.records.checkpoint import read_record
from sbattn.records.integrity import seal

sys.path.insert(0, str(Path(__file__).parent))
import _runs  # noqa: E402
from _runs import copy_of, finished_output, one_line  # noqa: E402

TINY = [*_runs.TINY, "--seed=0"]
NAME = _runs.run_name(*TINY)
BASELINE = _runs.run_name(*TINY, "--attention=none")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """An output directory holding one finished tiny SB run (seed 0)."""
    return finished_output(tmp_path_factory.mktemp("finished"), TINY)


def edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))  # NaN written as NaN, as a hand edit may


def with_baseline(out: Path) -> None:
    """A second finished run beside the SB one (the baseline, from its JSON), so that report has a table to make."""
    def baseline(record):
        record["summary"]["config"].update(attention="none", use_sb=False)
        record["summary"]["run"] = BASELINE
    shutil.copy(out / f"{NAME}.json", out / f"{BASELINE}.json")
    edit_json(out / f"{BASELINE}.json", baseline)


def weights_record(out: Path) -> dict:
    return torch.load(out / f"{NAME}.pth", weights_only=True)


# ------------------------------------------------------------- 1, 2: a run's JSON, every field checked when read

def summary_edit(**fields):
    return lambda r: r["summary"].update(fields)


def config_edit(**fields):
    return lambda r: r["summary"]["config"].update(fields)


EDITS = {  # what a hand edit did -> (the change, the field the refusal names)
    "params missing": (lambda r: r["summary"].pop("params"), "summary.params is null or missing"),
    "params a string": (summary_edit(params="many"), "summary.params is 'many'"),
    "train time null": (summary_edit(train_seconds=None), "summary.train_seconds is null"),
    "seed not an integer": (config_edit(seed=1.5), "summary.config.seed is 1.5"),
    "attention a list": (config_edit(attention=["se"]), "summary.config.attention is ['se']"),
    "history entries not dicts": (lambda r: r.update(history=[1]), "history[0] is not epoch 1's record"),
    "accuracy true": (summary_edit(final_eval_acc=True), "summary.final_eval_acc is True"),
    "accuracy 1e308": (summary_edit(final_eval_acc=1e308), "summary.final_eval_acc is 1e+308"),
    "accuracy NaN": (summary_edit(final_eval_acc=float("nan")), "summary.final_eval_acc is nan"),
    "accuracy over 1": (summary_edit(final_eval_acc=1.5), "summary.final_eval_acc is 1.5"),
    "unknown attention": (config_edit(attention="zzz"), "summary.config.attention is 'zzz', not an attention kind"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_report_refuses_a_hand_edited_run_naming_its_file_and_field(finished, tmp_path, capsys, edit):
    out = copy_of(finished, tmp_path)
    with_baseline(out)
    change, words = EDITS[edit]
    edit_json(out / f"{NAME}.json", change)
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{out / NAME}.json: {words}" in err
    assert not (out / "compare.md").exists()  # no table believes it


@pytest.mark.parametrize("edit", ["params a string", "seed not an integer", "accuracy true", "unknown attention"])
def test_training_refuses_to_reuse_a_hand_edited_run(finished, tmp_path, capsys, edit):
    out = copy_of(finished, tmp_path)
    change, words = EDITS[edit]
    edit_json(out / f"{NAME}.json", change)
    before = (out / f"{NAME}.pth").read_bytes()
    capsys.readouterr()
    assert main(["train", *TINY, f"--output-dir={out}"]) == 2
    assert f"{NAME}.json: {words}" in one_line(capsys.readouterr().err)
    assert (out / f"{NAME}.pth").read_bytes() == before


def test_an_intact_pair_of_runs_reports(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    with_baseline(out)
    assert main(["report", str(out)]) == 0
    assert "| baseline |" in (out / "compare.md").read_text()


# ------------------------------------------------------------------------- 3: a view larger than its storage

def test_a_stride_0_view_is_refused_before_it_is_hashed(finished, tmp_path, capsys, monkeypatch):
    out = copy_of(finished, tmp_path)
    record = weights_record(out)
    record["state_dict"]["features.huge"] = torch.zeros(1).expand(2**22)  # 16 MiB claimed of 4 bytes stored
    torch.save(seal(record), out / f"{NAME}.pth")

    def no_hashing(record):
        raise AssertionError("the checksum touched the tensors before their sizes were checked")

    monkeypatch.setattr(integrity, "checksum", no_hashing)
    capsys.readouterr()
    assert main(["evaluate", str(out / f"{NAME}.pth"), "--device", "cpu"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "state_dict.features.huge" in err and "claims 16,777,216 bytes of a storage of 4" in err


# ------------------------------------------------------------------------------ 4: no checksum downgrade

def test_a_current_format_file_stripped_of_its_checksum_is_refused(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    record = weights_record(out)
    record.pop("checksum")
    record["state_dict"]["classifier.2.bias"] += 1.0  # the edit that the missing checksum would hide
    torch.save(record, out / f"{NAME}.pth")
    capsys.readouterr()
    assert main(["evaluate", str(out / f"{NAME}.pth"), "--device", "cpu"]) == 2
    assert "has no checksum, which every file of its format 3 carries" in one_line(capsys.readouterr().err)


def test_a_format_of_true_is_no_format(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    record = weights_record(out)
    record["format"] = True  # True == 1, the earliest format
    torch.save(seal(record), out / f"{NAME}.pth")
    with pytest.raises(CheckpointError, match="has format True, this sbattn reads weights format 1, 2, 3"):
        read_record(out / f"{NAME}.pth")


# --------------------------------------------------------------------- 5: names from a file, escaped when shown

def test_predict_escapes_the_class_names_a_file_holds(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    record = weights_record(out)
    record["summary"]["classes"] = ["\x1b[31mred\x1b[0m", "\x1b]0;title\x07", *map(str, range(8))]
    torch.save(seal(record), out / f"{NAME}.pth")
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    capsys.readouterr()
    assert main(["predict", str(out / f"{NAME}.pth"), str(image), "--device", "cpu", "--topk", "10"]) == 0
    said = capsys.readouterr().out
    assert "\x1b" not in said and "\x07" not in said
    assert "\\x1b[31mred\\x1b[0m" in said and "\\x1b]0;title\\x07" in said


def test_report_escapes_what_it_prints_from_a_runs_json(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    with_baseline(out)
    edit_json(out / f"{NAME}.json", config_edit(activation="\x1b[2J\x1b[31mevil"))
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    said = capsys.readouterr().out
    assert "\x1b" not in said and "\x1b" not in (out / "compare.md").read_text()
    assert "SB(\\x1b[2J\\x1b[31mevil)" in said


# ------------------------------------------------------------ 6: a damaged finished run is not "no run"

def test_a_finished_run_with_a_truncated_json_is_refused_not_trained_over(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    summary, weights = out / f"{NAME}.json", out / f"{NAME}.pth"
    summary.write_bytes(summary.read_bytes()[:100])  # truncate -s 100
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", *TINY, f"--output-dir={out}"]) == 2
    err = one_line(capsys.readouterr().err)
    assert str(summary) in err and str(weights) in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main(["report", str(out)]) == 2  # nor believed to be no run by report
    assert str(summary) in one_line(capsys.readouterr().err)

    assert main(["train", *TINY, f"--output-dir={out}", "--overwrite"]) == 0
    [aside] = (out / "replaced").iterdir()
    assert (aside / weights.name).read_bytes() == before[weights.name]
    assert (aside / summary.name).read_bytes() == before[summary.name]
    assert json.loads(summary.read_text())["summary"]["complete"] is True  # trained again, whole


# --------------------------------------------------------------- 7: what the checksum does catch: a naive edit

def test_a_weight_changed_without_resealing_is_refused(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    record = weights_record(out)
    record["state_dict"]["classifier.2.bias"][0] += 0.5  # the checksum kept as it was
    torch.save(record, out / f"{NAME}.pth")
    capsys.readouterr()
    assert main(["evaluate", str(out / f"{NAME}.pth"), "--device", "cpu"]) == 2
    assert "is damaged: its contents do not match the checksum" in one_line(capsys.readouterr().err)
