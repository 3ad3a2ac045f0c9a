"""benchmarks/gpu.sh, issue #18's GPU measurement: its dry run on the CPU end to end, and its projections."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sbattn import TrainConfig
from sbattn.records.checkpoint import CHECKPOINT_FORMAT
from sbattn.records.integrity import seal
from sbattn.experiments.jobs import Job

ROOT = Path(__file__).resolve().parents[1]


def gpu_module():
    spec = importlib.util.spec_from_file_location("sbattn_gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def table_rows(md: str) -> list[str]:
    """The first cells of the body rows of a markdown table."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    return [line.strip("|").split("|")[0].strip() for line in lines[2:]]


def gpu_sh(out, *args, cwd, timeout=600):
    """benchmarks/gpu.sh as docs/gpu.md gives it, with `args` after OUT_DIR; one thread per run, as the suite's
    tests train."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    # docs/gpu.md's dry run as written (its output folder and a work folder aside): the dry run's own defaults keep
    # it eager (--modes none; the compiled modes are tested in test_train.py) and short
    proc = gpu_sh(out, "all", "--dry-run", "--work-dir", str(tmp_path / "work"), cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-speed.json", "gpu-table.json"]  # the runs' files elsewhere
    speed, table = (json.loads((out / f"gpu-{part}.json").read_text()) for part in ("speed", "table"))
    assert speed["dry_run"] and speed["environment"]["torch"] == torch.__version__
    assert speed["data"]["train_images"] == 1024 and speed["data"]["decode_s"] > 0

    alone = speed["single_run"]["none"]
    assert alone["finished"] and alone["epochs_done"] == 2 and len(alone["eval_acc"]) == 2
    assert 0 < alone["first_epoch_s"] < alone["projected_s"] < alone["projected_with_decoding_s"]
    assert alone["epoch_img_s"] > 0 and alone["train_img_s"] > 0

    pair = speed["precision_pair"]
    assert pair["finished"] and pair["mode"] == "none" and pair["compared"] == "final accuracy"
    accs = {p: 100 * pair["runs"][p]["final_eval_acc"] for p in ("fp32", "bf16")}
    assert pair["accuracy_pct"] == pytest.approx(accs)
    assert pair["bf16_minus_fp32_pp"] == pytest.approx(accs["bf16"] - accs["fp32"])
    assert pair["runs"]["fp32"]["train_loss"] != pair["runs"]["bf16"]["train_loss"]  # two precisions really ran

    t = table["table"]
    assert t["finished"] and t["jobs"] == 7 and all(r["finished"] for r in t["runs"].values())
    assert t["wall_s"] > 0 and t["aggregate_img_s"] > 0
    assert t["one_run_alone_img_s"] == alone["epoch_img_s"]
    assert t["throughput_vs_one_run"] == pytest.approx(t["aggregate_img_s"] / alone["epoch_img_s"])
    assert table_rows(t["tables"]["compare"])[:3] == ["baseline", "SE", "SB(Tanh)"]
    assert table_rows(t["tables"]["ablation"]) == ["Tanh", "Sigmoid", "ReLU", "Softmax", "Linear"]
    assert "== part table" in proc.stdout and "7 runs at once" in proc.stdout
    assert speed["mode"] == "fastest single run" and table["mode"] == "none"  # --mode fastest, resolved


def test_a_run_stopped_by_the_budget_is_projected_from_its_epochs(tmp_path):
    gpu = gpu_module()
    config = TrainConfig(device="cpu", dataset="fake", width=0.0625, epochs=80, seed=0, output_dir=str(tmp_path))
    job = Job("sb", config)
    history = [{"epoch": e, "eval_acc": 0.1 * e, "train_loss": 2.0 / e, "images_per_sec": 1000.0 + e,
                "seconds": 50.0} for e in (1, 2, 3, 4)]
    # as the run left it when stopped after epoch 4 (only its history is read; sealed as sbattn seals its files)
    torch.save(seal({"format": CHECKPOINT_FORMAT, "history": history}), job.paths.checkpoint)
    watch = gpu.Watch([job])
    watch.epochs["sb"] = {1: 30.0, 2: 31.5, 3: 33.5, 4: 35.0}  # the epoch lines' times in its log
    figures = gpu.run_figures(job, watch, full_epochs=80)
    assert not figures["finished"] and figures["epochs_done"] == 4 and figures["final_eval_acc"] is None
    assert figures["first_epoch_s"] == 30.0 and figures["epoch_s"] == 1.5  # the median of 1.5, 2.0, 1.5
    assert figures["projected_s"] == 30.0 + 79 * 1.5
    assert figures["train_img_s"] == 1003.0  # the median over the epochs after the first (compilation)
    assert figures["epoch_img_s"] == pytest.approx(1004 * 50 / 1.5)
    assert figures["eval_acc"] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def streams_module():
    spec = importlib.util.spec_from_file_location("sbattn_streams_benchmark", ROOT / "benchmarks" / "streams.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_streams_dry_run_steps_the_seven_table_models_alone_and_together(tmp_path):
    out = tmp_path / "streams.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "streams.py"), "--dry-run", "--repeats", "1",
                           "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    names = ["baseline", "se", "sb-sigmoid", "sb-tanh", "sb-relu", "sb-softmax", "sb-linear"]
    assert list(figures["alone_img_s"]) == names and all(v > 0 for v in figures["alone_img_s"].values())
    together = figures["together"]
    assert together["runs"] == 7 and together["img_s"] > 0
    assert together["vs_one_run_alone"] == pytest.approx(together["img_s"] / figures["alone_img_s"]["sb-tanh"])
    assert together["table_projected_s"] == pytest.approx(80 * 782 * 7 * 16 / together["img_s"])


def test_streams_runner_trains_each_model_as_its_own_table_row():
    streams = streams_module()
    configs = streams.table_configs(TrainConfig(device="cpu", dataset="fake", width=0.0625, batch_size=8))
    assert {k: (c.attention, c.activation) for k, c in configs.items() if k in ("baseline", "se", "sb-relu")} == {
        "baseline": ("none", "tanh"), "se": ("se", "tanh"), "sb-relu": ("sb", "relu")}
    runner = streams.make_runner("sb-relu", configs["sb-relu"], torch.device("cpu"), 8, compiled=False)
    before = [p.detach().clone() for p in runner.model.parameters()]
    for i in range(3):
        runner.step(i)
    assert runner.sums.steps.item() == 3 and torch.isfinite(runner.sums.loss)
    assert all(not torch.equal(a, p) for a, p in zip(before, runner.model.parameters()) if p.requires_grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_step_replayed_as_a_cuda_graph_trains_as_the_eager_step():
    streams = streams_module()
    config = streams.table_configs(TrainConfig(device="cuda", dataset="fake", width=0.25))["sb-tanh"]
    check = streams.graph_vs_eager(config, torch.device("cuda"), 64, compiled=False)
    assert check["loss_rel_diff"] < 1e-2
    assert check["weights_rel_diff"] < 0.05 * check["weights_moved"]


def test_the_call_dry_run_brings_back_finished_runs_that_merge_checks_and_keeps(tmp_path):
    """Part call on the CPU: the schemes side by side, the CUDA tests, then the pair and the table's runs, finished
    ones archived; merge takes a run only when its checksum and recipe hold, and a second call trains nothing the
    runs folder holds. Each command as docs/gpu.md and the README give it, with --dry-run and the output folders
    alone: the call's defaults (--mode fastest among them) are what a lent GPU would run."""
    out, runs, work = tmp_path / "out", tmp_path / "runs", tmp_path / "work"
    folders = ["--dry-run", "--work-dir", str(work), "--runs-dir", str(runs)]

    def gpu(*args):
        proc = gpu_sh(out, *args, *folders, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    said = gpu("call")
    call = json.loads((out / "gpu-call.json").read_text())
    assert call["mode"] == "none" and "== part call (--compile none)" in said  # fastest: none in a dry run
    assert call["data"]["train_images"] == 1024
    schemes = call["schemes"]
    assert all(schemes[k]["aggregate_img_s"] > 0 for k in ("process", "stream")) and schemes["faster"]
    assert all(len(schemes[k]["runs"]) == 2 for k in ("process", "stream", "fused"))  # the dry run's --at-once
    assert call["cuda_tests"]["returncode"] == 0
    tests = call["cuda_tests"]  # a dry run collects them only, and never the dry-run tests (this one among them)
    assert tests["collect_only"] and "collected" in tests["tail"] and "dry_run" not in tests["tail"]
    assert len(call["reference_runs"]["finished"]) == 8  # the fp32 run and the table's seven

    import tarfile
    archive = out / "reference-runs.tar.gz"
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers())
        tar.extractall(tmp_path / "x", filter="data")
    assert len(names) == 16 and not any(n.endswith(".pth") for n in names)
    se = next(n[:-len(".json")] for n in names if n.startswith("vgg16_0.5_False_True_tanh_w0.0625_seed0")
              and n.endswith(".json"))
    edited = tmp_path / "x" / f"{se}.json"  # SE's accuracy raised on the way
    record = json.loads(edited.read_text())
    record["summary"]["final_eval_acc"] = 0.99
    edited.write_text(json.dumps(record))
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            tar.add(tmp_path / "x" / name, arcname=name)

    said = gpu("merge")
    assert f"{se}: its checksum does not match its contents" in said
    assert "merge: 7 run(s) added" in said and (runs / "compare.md").exists() and (runs / "fp32").is_dir()
    assert not (runs / edited.name).exists()
    gpu("call", "--skip", "schemes,tests")  # docs/gpu.md's later call
    again = json.loads((out / "gpu-call.json").read_text())
    assert again["reference_runs"]["to_train"] == 1  # SE alone
    assert "schemes" not in again and "cuda_tests" not in again and again["reference_runs"]["finished"] == [
        se]


@pytest.mark.parametrize("args, said", [
    (["call", "--modes", "none,fast"], "--modes none,fast: each must be one of none, model, step"),
    (["call", "--skip", "schemes,test"], "--skip schemes,test: test: no such step"),
    (["call", "--seeds", "0"], "--seeds 0: must be from 1 to 1000"),
    (["call", "--budget", "20"], "--budget 20.0: must be at least 45 s"),
    (["speed", "--scheme-seconds", "0"], "--scheme-seconds 0.0: must be more than 0"),
    (["merge"], "reference-runs.tar.gz: no such file; merge takes the folder that part call returned"),
    (["call", "--mode", "fastests"], "argument --mode: invalid choice: 'fastests'"),
], ids=["modes", "skip", "seeds", "budget", "seconds", "merge-without-archive", "mode"])
def test_an_unusable_option_is_refused_in_one_line_before_anything_starts(tmp_path, capsys, args, said):
    gpu = gpu_module()
    out = tmp_path / "out"
    try:
        code = gpu.main([str(out), *args, "--dry-run", "--work-dir", str(tmp_path / "work")])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "work").exists()  # nothing written, nothing started


def test_gpu_sh_refuses_without_a_traceback(tmp_path):
    proc = gpu_sh(tmp_path / "out", "call", "--dry-run", "--modes", "fastest", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "gpu.sh: error: --modes fastest: each must be one of none, model, step, comma-separated\n"


def test_every_part_resolves_mode_fastest_before_it_trains(tmp_path):
    """--mode fastest: part speed's fastest single run in OUT_DIR, else step (on the GPU) or none (a dry run), for
    every part; a mode given stays."""
    gpu = gpu_module()
    out = tmp_path / "out"
    for part in gpu.PARTS:
        for dry, expected in ((False, "step"), (True, "none")):
            args = gpu.parse_args([str(out), part, *(["--dry-run"] if dry else [])])
            assert gpu.make_setup(args).mode == expected
        assert gpu.make_setup(gpu.parse_args([str(out), part, "--mode", "model"])).mode == "model"
    out.mkdir()
    (out / "gpu-speed.json").write_text(json.dumps({"single_run": {
        "none": {"projected_s": 955.0}, "model": {"projected_s": 343.0}, "step": {"projected_s": None}}}))
    for part in gpu.PARTS:
        assert gpu.make_setup(gpu.parse_args([str(out), part])).mode == "model"  # step did not train through
    args = gpu.parse_args([str(out), "call", "--dry-run"])
    assert (args.seeds, args.at_once, args.modes, args.budget) == (1, 2, "none", 180)  # a dry run's defaults
    args = gpu.parse_args([str(out), "call"])
    assert (args.seeds, args.at_once, args.modes, args.budget, args.scheme_seconds) == (3, 7, "none,model,step", 510,
                                                                                          75)


def test_part_speed_trains_its_pair_in_the_fastest_mode_it_measured(tmp_path, monkeypatch):
    gpu = gpu_module()
    setup = gpu.make_setup(gpu.parse_args([str(tmp_path / "out"), "speed", "--dry-run"]))
    assert setup.mode == "none"  # before the single runs: a dry run's fallback
    monkeypatch.setattr(gpu, "measure_data", lambda setup, rec: 0.0)
    monkeypatch.setattr(gpu, "measure_single_runs", lambda setup, rec, decode_s, deadline: {
        "none": {"projected_s": 9.0}, "model": {"projected_s": 5.0}, "step": {"projected_s": 3.0}})
    trained = []
    monkeypatch.setattr(gpu, "measure_precision_pair", lambda setup, rec, deadline: trained.append(setup.mode))
    gpu.part_speed(setup, None, 0.0)
    assert trained == ["step"]
