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
from sbattn.records.checkpoint import save_checkpoint
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


def test_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    # --modes none: the compiled modes are tested in test_train.py, and compiling takes minutes on 2 cores.
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out), "all", "--dry-run", "--modes", "none",
                           "--work-dir", str(tmp_path / "work")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
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


def test_a_run_stopped_by_the_budget_is_projected_from_its_epochs(tmp_path):
    gpu = gpu_module()
    config = TrainConfig(device="cpu", dataset="fake", width=0.0625, epochs=80, seed=0, output_dir=str(tmp_path))
    job = Job("sb", config)
    history = [{"epoch": e, "eval_acc": 0.1 * e, "train_loss": 2.0 / e, "images_per_sec": 1000.0 + e,
                "seconds": 50.0} for e in (1, 2, 3, 4)]
    save_checkpoint(job.paths.checkpoint, {"history": history})  # as the run left it when stopped after epoch 4
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
    runs folder holds."""
    out, runs, work = tmp_path / "out", tmp_path / "runs", tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    common = ["--dry-run", "--mode", "none", "--work-dir", str(work), "--runs-dir", str(runs)]

    def gpu(*args):
        proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out), *args, *common], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    gpu("call", "--seeds", "1", "--at-once", "8", "--scheme-seconds", "60", "--tests-seconds", "120")
    call = json.loads((out / "gpu-call.json").read_text())
    schemes = call["schemes"]
    assert all(schemes[k]["aggregate_img_s"] > 0 for k in ("process", "stream")) and schemes["faster"]
    assert call["cuda_tests"]["returncode"] == 0
    assert len(call["reference_runs"]["finished"]) == 8  # the fp32 run and the table's seven

    import tarfile
    archive = out / "reference-runs.tar.gz"
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers())
        tar.extractall(tmp_path / "x", filter="data")
    assert len(names) == 16 and not any(n.endswith(".pth") for n in names)
    edited = tmp_path / "x" / "vgg16_0.5_False_True_tanh_w0.0625_seed0.json"  # SE's accuracy raised on the way
    record = json.loads(edited.read_text())
    record["summary"]["final_eval_acc"] = 0.99
    edited.write_text(json.dumps(record))
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            tar.add(tmp_path / "x" / name, arcname=name)

    said = gpu("merge")
    assert "vgg16_0.5_False_True_tanh_w0.0625_seed0: its checksum does not match its contents" in said
    assert "merge: 7 run(s) added" in said and (runs / "compare.md").exists() and (runs / "fp32").is_dir()
    assert not (runs / edited.name).exists()
    gpu("call", "--seeds", "1", "--skip", "schemes,tests")
    assert json.loads((out / "gpu-call.json").read_text())["reference_runs"]["to_train"] == 1  # SE alone
