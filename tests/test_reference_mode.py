"""The reference implementation's run, in the main environment: its draws made from the right generator state
(after the seed and the model, nothing else; a mid-epoch resume draws its epoch again), its figures beside the
exact ones, example.py's faithful defaults, and fp32 in the layout whose gradients are float64's. The bit-for-bit
comparison with a restatement of the reference's loop is tests/interop/test_reference_run.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sbattn
from sbattn.config import TrainConfig
from sbattn.errors import UserError
from sbattn.train import train
from sbattn.train.evaluation import evaluate, fold_batchnorm
from sbattn.train.step import EpochSums
from sbattn.train.step import choose_layout

sys.path.insert(0, str(Path(__file__).parent))
from _runs import ctrl_c_at_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DROP = {"seconds", "images_per_sec", "eval_seconds"}


def tiny(tmp_path, **overrides) -> TrainConfig:
    values = dict(device="cpu", dataset="fake", width=0.0625, batch_size=24, precision="fp32", epochs=2,
                  milestones=[1], seed=5, rng="reference", output_dir=str(tmp_path), eval_batch_size=256)
    return TrainConfig(**{**values, **overrides})


def history(result) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in DROP} for h in result.history]


def weights(result) -> dict:
    return torch.load(result.paths.weights, weights_only=True)["state_dict"]


def test_the_first_epoch_draws_from_the_state_the_seed_and_the_model_leave(tmp_path, monkeypatch):
    """Between torch.manual_seed(seed) and the first epoch's draws, the model's initialisation alone draws from the
    global generator, as in the reference's script (its datasets and loaders draw nothing)."""
    import sbattn.train.epoch as pipeline
    states = []
    real = pipeline.draw_epoch
    monkeypatch.setattr(pipeline, "draw_epoch", lambda *a: (states.append(torch.get_rng_state()), real(*a))[1])
    config = tiny(tmp_path, epochs=1, milestones=[1])
    assert train(config, quiet=True).exit_code == 0
    torch.manual_seed(config.seed)
    sbattn.create_model("vgg16", **config.model_options())
    assert len(states) == 1 and torch.equal(states[0], torch.get_rng_state())


def test_a_reference_run_stopped_mid_epoch_resumes_to_the_same_run(tmp_path, monkeypatch):
    """The checkpoint inside an epoch holds the generator's state from before the epoch's draws, so the resumed
    run draws the same epoch again and skips the steps it had done."""
    import sbattn.train.loop as start
    whole = train(tiny(tmp_path / "whole"), quiet=True)
    make_step = start.make_step
    monkeypatch.setattr(start, "make_step", ctrl_c_at_step(make_step, 63))  # in epoch 2's 20th step (of 43)
    assert train(tiny(tmp_path / "stopped"), quiet=True).exit_code == 130
    monkeypatch.setattr(start, "make_step", make_step)
    resumed = train(tiny(tmp_path / "stopped", resume=True), quiet=True)
    assert history(resumed) == history(whole)
    a, b = weights(resumed), weights(whole)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_reference_draws_are_refused_under_torchrun(tmp_path, monkeypatch):
    import sbattn.train.distributed as distributed
    monkeypatch.setattr(distributed, "setup", lambda device, timeout: (distributed.Context(0, 2, 0), device))
    monkeypatch.setattr(distributed, "teardown", lambda ctx: None)
    with pytest.raises(UserError, match="--rng reference is the reference implementation's single-process run"):
        train(tiny(tmp_path), quiet=True)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_the_sampled_training_figures_are_every_batch_size_th_batch_each_weighing_one():
    """The reference averages the loss and accuracy of batches 0, B, 2B, ... (B: the batch size); a last, smaller
    batch among them weighs as a full one and its accuracy is out of its own size."""
    batch, steps = 4, 17
    samples = (steps - 1) * batch + 2  # the last batch holds 2 and is sampled (index 16)
    sums = EpochSums.zeros(torch.device("cpu"), batch, samples)
    sums.restart(None, 0)
    losses, accs = [], []
    for index in range(steps):
        n = batch if index < steps - 1 else 2
        y = torch.arange(n) % 3
        out = F.one_hot((y + (torch.arange(n) < index % 3)) % 3, 3).float()  # index % 3 of the n wrong
        loss = torch.tensor(0.5 + index, dtype=torch.float32)
        sums.add(loss, out, y)
        if index % batch == 0:
            losses.append(loss.item())
            accs.append(((out.argmax(1) == y).sum().float() / n).item())
    assert sums.sampled_batches(steps) == len(losses) == 5
    assert sums.sampled_loss.item() == sum(losses) and sums.sampled_acc.item() == pytest.approx(sum(accs), abs=0)
    assert accs[-1] == 0.5  # the 2-image batch: one of two right


def test_the_reference_test_figure_is_the_mean_of_its_batches():
    """evaluate's batch means group the test set as the reference's loader did, whatever the evaluation's own
    batch size: the last, smaller batch weighs as a full one."""
    torch.manual_seed(0)
    model = sbattn.create_model("vgg16", attention="sb", width=0.0625).eval()
    for m in model.modules():  # running statistics that are not the identity's, so folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2)
    images = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8)
    out = fold_batchnorm(model)(sbattn.data.normalize(images))
    wrong = torch.tensor([i % 5 < 2 or i > 20 for i in range(23)])  # 2 of each 5 wrong, then the last 2 of 3
    labels = (out.argmax(1) + wrong.long()) % 10
    result = evaluate(model, images, labels, batch_size=7, batch_mean_size=5)
    losses = F.cross_entropy(out, labels, reduction="none")
    right = (out.argmax(1) == labels).double()
    chunks = [slice(i, i + 5) for i in range(0, 23, 5)]
    assert result.acc == pytest.approx(right.mean().item(), abs=1e-12)
    assert result.batch_mean_acc == pytest.approx(sum(right[c].mean().item() for c in chunks) / 5, abs=1e-12)
    assert result.batch_mean_loss == pytest.approx(sum(losses[c].mean().item() for c in chunks) / 5, rel=1e-6)
    assert (result.acc, result.batch_mean_acc) == (pytest.approx(12 / 23), pytest.approx((4 * 3 / 5 + 0) / 5))


def test_a_finished_run_records_both_figures_and_results_txt_holds_the_reference_one(tmp_path):
    result = train(tiny(tmp_path, rng="sbattn", batch_size=40, eval_batch_size=100), quiet=True)
    record = json.loads(result.paths.summary.read_text())
    entry, summary = record["history"][-1], record["summary"]
    for key in ("train_loss_sampled", "train_acc_sampled", "eval_loss_batch_mean", "eval_acc_batch_mean"):
        assert isinstance(entry[key], float), key
    assert summary["final_eval_acc_batch_mean"] != summary["final_eval_acc"]  # 256 test images: 6 x 40 + 16
    line = (tmp_path / "results.txt").read_text().splitlines()[-1]
    assert line.endswith(f"--> acc : {100 * summary['final_eval_acc_batch_mean']:.2f}%.")
    assert "eval_acc_batch_mean" in result.paths.history_csv.read_text().splitlines()[0].split(",")


def run_example(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "example.py", "main", "--device=cpu", "--dataset=fake", "--width=0.0625",
                           "--epochs=1", "--milestones=[1]", "--seed=0", f"--output_dir={tmp_path}", *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(next(tmp_path.glob("*.json")).read_text())["summary"]
    return proc, summary


def test_example_py_runs_the_reference_arithmetic_unless_told_otherwise(tmp_path):
    proc, summary = run_example(tmp_path / "faithful")
    assert (summary["config"]["precision"], summary["config"]["rng"]) == ("fp32", "reference")
    assert "layout=contiguous" in proc.stdout
    assert "the fast path: --precision=auto --rng=sbattn" in proc.stdout
    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"rng": "sbattn"}))  # a configuration file wins over example.py's defaults
    proc, summary = run_example(tmp_path / "fast", "--precision=bf16", f"--config={config}")
    assert (summary["config"]["precision"], summary["config"]["rng"]) == ("bf16", "sbattn")
    assert "the fast path" not in proc.stdout


def _fp32_against_float64(layout: str, seed: int) -> float:
    """The median relative error of the reference VGG16's fp32 gradients (width 0.25, a random batch of 32) in
    `layout` against the same model's in float64; the conv biases before a BatchNorm left out (their true
    gradient is 0)."""
    fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}[layout]
    torch.manual_seed(seed)
    x, y = torch.randn(32, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (32,))
    grads = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(1)
        model = sbattn.create_model("vgg16", width=0.25).to(dtype).to(memory_format=fmt).train()
        F.cross_entropy(model(x.to(dtype).contiguous(memory_format=fmt)), y).backward()
        convs = {f"{name}.bias" for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
        grads[dtype] = {n: p.grad.double() for n, p in model.named_parameters() if n not in convs}
    errors = [((grads[torch.float32][n] - g).norm() / g.norm()).item() for n, g in grads[torch.float64].items()]
    return sorted(errors)[len(errors) // 2]


def test_fp32_trains_in_the_layout_whose_gradients_are_float64s(tmp_path):
    """docs/fp32.md: channels-last's forward rounds further from float64 (BatchNorm's statistics above all), so
    more ReLU and max-pool decisions flip and the gradient moves by 1e-3 where contiguous' stays at 1e-6. The
    layout --layout auto picks in fp32 must be within fp32's rounding on at least 3 of these 4 batches."""
    config = TrainConfig(device="cpu", precision="fp32", width=0.25, cache_dir=str(tmp_path))
    choice = choose_layout(config, torch.device("cpu"), None)
    errors = [_fp32_against_float64(choice.layout, seed) for seed in range(4)]
    assert sum(e < 1e-4 for e in errors) >= 3, (choice, errors)
