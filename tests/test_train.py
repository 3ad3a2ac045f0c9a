"""Training end to end on the fake set with a width-reduced model: outputs, metrics, interruption and faults."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sbattn
from sbattn import TrainConfig
from sbattn.records.checkpoint import load_checkpoint
from sbattn.cli import main
from sbattn.errors import CheckpointError, UserError
from sbattn.train.loop import train

sys.path.insert(0, str(Path(__file__).parent))
from _runs import ctrl_c_at_step, run_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device=cpu", "--dataset=fake", "--width=0.0625", "--batch_size=32", "--precision=fp32",
        "--eval-batch-size=256"]


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(device="cpu", dataset="fake", width=0.0625, batch_size=32, precision="fp32", epochs=2,
                  milestones=[1], seed=0, output_dir=str(tmp_path / "results"), eval_batch_size=256)
    return TrainConfig(**{**values, **overrides})


def run_cli(*args, cwd=ROOT, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_seed_command_trains_and_leaves_the_seeds_files(tmp_path):
    out = tmp_path / "results"
    proc = run_cli("example.py", "main", "--device='cpu'", "--attn_ratio=0.5", "--use_sb=True", "--use_se=False",
                   "--activation='tanh'", "--epochs=2", "--batch_size=32", "--init_lr=0.1", "--gamma=0.2",
                   "--milestones=[1,2]", "--weight_decay=9e-6", "--dataset=fake", "--width=0.0625",
                   f"--output-dir={out}")
    assert proc.returncode == 0, proc.stderr
    # the reference's stem, plus the width when not 1 and the hash of the recipe's other differences
    stem = out / TrainConfig(epochs=2, batch_size=32, milestones=[1, 2], dataset="fake", width=0.0625).run_name
    assert stem.name.startswith("vgg16_0.5_True_False_tanh_w0.0625_r")
    for suffix in (".png", ".pth", ".csv", ".json"):
        assert Path(f"{stem}{suffix}").exists(), suffix
    assert not Path(f"{stem}.ckpt").exists()  # a finished run leaves no checkpoint behind
    line = (out / "results.txt").read_text().splitlines()[-1]
    assert " ::: [attn_ratio : 0.5, use_sb : True, use_se : False, activation : tanh] --> acc : " in line
    assert line.endswith("%.")
    assert Path(f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(Path(f"{stem}.json").read_text())
    assert record["summary"]["complete"] and len(record["history"]) == 2
    assert f"{100 * record['summary']['final_eval_acc']:.2f}%" in line
    header = Path(f"{stem}.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc", "seconds",
            "images_per_sec"} <= set(header)
    model = sbattn.load(Path(f"{stem}.pth"))
    assert isinstance(model, sbattn.VGG) and not model.training
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_seed_command_on_a_machine_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_cli("example.py", "main", "--device='cuda'", "--epochs=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--device=cpu" in proc.stderr


def test_bad_value_stops_before_work_exit_2(tmp_path):
    for bad in ("--gamma=2", "--use_se=True", "--milestones=[3,2]", "--activation=gelu"):
        code = main(["train", *TINY, bad, f"--output-dir={tmp_path}"])
        assert code == 2
    assert not list(tmp_path.iterdir())


def test_metrics_are_exact_and_loss_falls(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, epochs=3, milestones=[2], width=0.125)
    result = train(config, quiet=True)
    history = result.history
    assert result.exit_code == 0 and [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["eval_acc"] > 0.2  # 10 classes: chance is 0.1
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.1, 0.02])
    # the reported eval accuracy is correct/total over the whole test set, recomputed here independently
    model = sbattn.load(result.paths.with_suffix(".pth"))
    data = sbattn.data.load_cifar10(dataset="fake")
    x = torch.from_numpy(data.test_images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        correct = (model(x).argmax(1).numpy() == data.test_labels).sum()
    assert history[-1]["eval_acc"] == pytest.approx(correct / len(data.test_labels), abs=1e-9)
    assert result.summary["final_eval_acc"] == history[-1]["eval_acc"]
    assert result.summary["best_eval_acc"] == max(h["eval_acc"] for h in history)


def test_one_final_accuracy_in_results_txt_the_summary_and_evaluate(tmp_path, capsys):
    # Trained in bf16: the per-epoch evaluation is bf16's, labelled so; the final accuracy is the final weights' in
    # fp32, which `sbattn evaluate` reproduces digit for digit.
    out = tmp_path / "results"
    assert main(["train", *TINY, "--precision=bf16", "--epochs=1", "--milestones=[1]", "--seed=0",
                 f"--output-dir={out}"]) == 0
    stem = out / run_name(*TINY, "--precision=bf16", "--epochs=1", "--milestones=[1]", "--seed=0")
    record = json.loads(Path(f"{stem}.json").read_text())
    summary, history = record["summary"], record["history"]
    assert history[-1]["eval_precision"] == "bfloat16" and summary["final_eval_precision"] == "fp32"
    assert "eval_precision" in Path(f"{stem}.csv").read_text().splitlines()[0].split(",")
    line = (out / "results.txt").read_text().splitlines()[-1]
    assert line.endswith(f"--> acc : {100 * summary['final_eval_acc_batch_mean']:.2f}%.")  # the reference's figure
    capsys.readouterr()
    assert main(["evaluate", f"{stem}.pth", "--device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"test loss {summary['final_eval_loss']:.4f}  accuracy {100 * summary['final_eval_acc']:.2f}%" in printed
    assert printed.rstrip().endswith("fp32)")
    assert main(["evaluate", f"{stem}.pth", "--device=cpu", "--precision=bf16"]) == 0
    assert f"test loss {history[-1]['eval_loss']:.4f}  accuracy {100 * history[-1]['eval_acc']:.2f}%" in (
        capsys.readouterr().out)


# bf16 rounds every product to 8 bits of mantissa: it must change the path a run takes, not where it ends. On this
# unsaturated setting (fake set, no augmentation, lr 0.01, 6 epochs), measured for seeds 0-2: fp32 51.6 / 60.2 /
# 62.9%, bf16 54.7 / 60.2 / 64.5%; seeds spread 11 points, the precisions at most 3.1 apart. One test image is
# 0.39 points; the tolerance is 5 points.
BF16_TOLERANCE = 0.05


def test_bf16_training_reaches_the_accuracy_of_fp32(tmp_path):
    results = {p: train(tiny_config(tmp_path / p, precision=p, epochs=6, milestones=[4], init_lr=0.01,
                                    augment="none"), quiet=True)
               for p in ("fp32", "bf16")}
    accs = {p: r.summary["final_eval_acc"] for p, r in results.items()}
    losses = {p: [h["train_loss"] for h in r.history] for p, r in results.items()}
    assert losses["bf16"] != losses["fp32"]  # bf16 really ran
    assert 0.3 < accs["fp32"] < 0.95, accs  # learned, and not so well that any two runs would agree
    assert abs(accs["bf16"] - accs["fp32"]) <= BF16_TOLERANCE, accs


def test_compile_computes_what_eager_mode_does_and_saves_a_plain_model(tmp_path):
    # A learning rate that barely moves the weights: both runs see nearly the same model on the same batches, so
    # their sums must agree to rounding; the weights' small steps must agree too, which checks the gradients.
    runs = {c: train(tiny_config(tmp_path / str(c), compile=c, epochs=1, init_lr=1e-3), quiet=True)
            for c in (False, True)}
    eager, compiled = (runs[c].history[0] for c in (False, True))
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-5)
    assert compiled["train_acc"] == eager["train_acc"] and compiled["eval_acc"] == eager["eval_acc"]
    models = {c: sbattn.load(r.paths.with_suffix(".pth")) for c, r in runs.items()}
    assert type(models[True]) is sbattn.VGG  # the weights of the model, not of the compiled wrapper
    torch.manual_seed(0)
    start = sbattn.create_model("vgg16", attention="sb", width=0.0625).state_dict()
    for name, w in models[False].state_dict().items():
        if w.ndim >= 2:  # convolutions and the blocks' linear layers, whose small weights resolve a small step
            step_eager, step_compiled = w - start[name], models[True].state_dict()[name] - start[name]
            assert 0 < step_eager.norm() < 0.05 * w.norm(), name  # a small step from where both started
            # Compiled kernels sum in another order: the steps agree to about 2%; a wrong or missing term would not.
            assert (step_compiled - step_eager).norm() <= 0.1 * step_eager.norm(), name


def test_the_whole_step_compiled_trains_as_it_does_uncompiled(tmp_path, monkeypatch):
    # --compile step: forward, backward, optimiser step and sums compiled as one function, the learning rate a tensor
    # that the schedule writes into. At lr 0.01 (0.002 in epoch 2) the losses of the two runs agree to about 2e-6
    # (compiled kernels sum in another order); measured when the compiled step was made to keep epoch 1's rate in
    # epoch 2: 1.2e-3 off; to take plain momentum instead of Nesterov's: 5e-5.
    import sbattn.train.step as step_module
    config = lambda name: tiny_config(tmp_path / name, compile="step", init_lr=0.01)
    compiled = train(config("compiled"), quiet=True)
    monkeypatch.setattr(step_module, "compile_step", lambda fn, device: fn)
    eager = train(config("eager"), quiet=True)
    assert [h["lr"] for h in compiled.history] == pytest.approx([0.01, 0.002])
    losses = {name: [h["train_loss"] for h in r.history] for name, r in (("compiled", compiled), ("eager", eager))}
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5), losses
    assert losses["compiled"] != losses["eager"]  # the compiled kernels really ran
    assert losses["eager"][1] < losses["eager"][0]  # and trained
    assert type(sbattn.load(compiled.paths.with_suffix(".pth"))) is sbattn.VGG


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_whole_step_on_cuda_never_waits_on_the_host():
    from sbattn.data import epoch_batches
    from sbattn.train.step import reference_optimizer
    from sbattn.train.step import EpochSums, make_step
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = sbattn.create_model("vgg16", attention="sb", width=0.25).to(device, memory_format=torch.channels_last)
    optimizer = reference_optimizer(model, 0.1, 9e-6)
    sums = EpochSums.zeros(device, 64, 64 * 8)
    step = make_step("step", model, optimizer, torch.amp.GradScaler("cuda", enabled=False), torch.bfloat16, sums,
                     device)
    images = torch.randint(0, 256, (64 * 8, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (64 * 8,), device=device)
    batches = list(epoch_batches(images, labels, 64, seed=0, epoch=0, memory_format=torch.channels_last))
    for x, y in batches[:4]:  # compilation, CUDA graph warm-up and recording
        step(x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the step raises
    try:
        for x, y in batches[4:]:
            step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert sums.steps.item() == 8 and torch.isfinite(sums.loss) and sums.nonfinite.item() == 0


def test_momentum_buffers_made_before_the_first_step_leave_the_run_unchanged():
    """--compile step makes SGD's momentum buffers up front (a buffer SGD made inside a CUDA graph would be
    overwritten by the next replay); the run must be the one SGD makes lazily, to the bit."""
    from sbattn.train.step import reference_optimizer
    from sbattn.train.step import make_momentum_buffers
    torch.manual_seed(0)
    x, y = torch.randn(3, 8, 3, 16, 16), torch.randint(0, 10, (3, 8))
    params = {}
    for made in (False, True):
        torch.manual_seed(1)
        model = sbattn.create_model("vgg16", attention="sb", width=0.0625)
        optimizer = reference_optimizer(model, 0.1, 5e-4)
        if made:
            make_momentum_buffers(optimizer)
            assert all(optimizer.state[p]["momentum_buffer"].abs().sum() == 0 for p in model.parameters())
        for i in range(3):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            optimizer.step()
        params[made] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(params[False], params[True]))
    buffers = [s["momentum_buffer"].clone() for s in optimizer.state.values()]
    make_momentum_buffers(optimizer)  # a resumed run's buffers are kept
    assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(buffers, optimizer.state.values()))


def test_whole_step_mode_stopped_mid_epoch_resumes_to_the_same_run(tmp_path, monkeypatch):
    import sbattn.train.loop as start
    import sbattn.train.step as step_module
    monkeypatch.setattr(step_module, "compile_step", lambda fn, device: fn)  # --compile step's path, uncompiled: fast
    config = lambda name, **kw: tiny_config(tmp_path / name, compile="step", **kw)  # 2 epochs of 32 steps
    whole = train(config("whole"), quiet=True)
    make_step = start.make_step
    monkeypatch.setattr(start, "make_step", ctrl_c_at_step(make_step, 40))  # Ctrl-C in epoch 2's eighth step
    assert train(config("stopped"), quiet=True).exit_code == 130
    monkeypatch.setattr(start, "make_step", make_step)
    resumed = train(config("stopped", resume=True), quiet=True)
    drop = {"seconds", "images_per_sec", "eval_seconds"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in whole.history]
    a, b = (_weights(r.paths.with_suffix(".pth")) for r in (resumed, whole))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_eval_every_evaluates_the_last_epoch_always(tmp_path):
    result = train(tiny_config(tmp_path, epochs=3, eval_every=2), quiet=True)
    assert [h["eval_acc"] is not None for h in result.history] == [False, True, True]


def test_figure_has_losses_and_accs_panels(tmp_path, monkeypatch):
    import sbattn.records.figures as figures
    captured = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: captured.setdefault("titles", [
        ax.get_title() for ax in fig.axes]))
    train(tiny_config(tmp_path, epochs=1, milestones=[1]), quiet=True)
    assert captured["titles"] == ["Losses", "Accs"]


def test_figure_epoch_ticks_are_whole_numbers(tmp_path, monkeypatch):
    import sbattn.records.figures as figures
    ticks = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: ticks.extend(ax.get_xticks() for ax in fig.axes))
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": e / 4, "eval_loss": 1 / e, "eval_acc": e / 4}
               for e in (1, 2)]
    figures.plot_history(history, tmp_path / "run.png")
    assert len(ticks) == 2 and all(t == int(t) for axis in ticks for t in axis), ticks


def test_seeds_name_runs_apart(tmp_path):
    for seed in (1, 2):
        train(tiny_config(tmp_path, epochs=1, milestones=[1], seed=seed), quiet=True)
    names = {p.name for p in (tmp_path / "results").glob("*.pth")}
    assert names == {f"{tiny_config(tmp_path, epochs=1, milestones=[1], seed=s).run_name}.pth" for s in (1, 2)}
    assert all("_seed1_" in n or "_seed2_" in n for n in names)
    assert len((tmp_path / "results" / "results.txt").read_text().splitlines()) == 2


def test_two_recipes_differing_only_in_weight_decay_train_side_by_side(tmp_path):
    configs = [tiny_config(tmp_path, epochs=1, milestones=[1], weight_decay=wd) for wd in (9e-6, 5e-4)]
    results = [train(c, quiet=True) for c in configs]
    assert [r.exit_code for r in results] == [0, 0] and results[0].paths.name != results[1].paths.name
    for config, result in zip(configs, results):
        summary = json.loads(result.paths.summary.read_text())["summary"]
        assert summary["config"]["weight_decay"] == config.weight_decay and summary["run"] == result.paths.name
    assert results[0].history != results[1].history  # each trained its own recipe
    # a different lr or epoch count names a run apart as well; how it is computed (precision) does not
    base = configs[0]
    assert len({base.run_name, tiny_config(tmp_path, epochs=1, milestones=[1], init_lr=0.05).run_name,
                tiny_config(tmp_path, epochs=2, milestones=[1]).run_name}) == 3
    assert tiny_config(tmp_path, epochs=1, milestones=[1], precision="bf16").run_name == base.run_name


def test_a_run_under_its_former_name_is_reused_and_resumed_not_trained_again(tmp_path, capsys):
    """Runs that an earlier version named without the weight decay's hash keep their names: a finished one is
    reused, one under way resumes; one of another recipe under that name is not taken for this one."""
    from sbattn.records.paths import RUN_FILES
    config = tiny_config(tmp_path, epochs=1, milestones=[1], weight_decay=5e-4)
    assert config.legacy_run_name != config.run_name
    finished = train(config, quiet=True)
    out = finished.paths.output_dir
    for suffix in (*RUN_FILES, ".log"):
        path = finished.paths.with_suffix(suffix)
        if path.exists():
            path.rename(out / f"{config.legacy_run_name}{suffix}")
    again = train(config)
    assert again.paths.name == config.legacy_run_name and again.history == finished.history
    assert "finished earlier" in capsys.readouterr().out
    assert not finished.paths.summary.exists()  # nothing trained under the new name
    other = tiny_config(tmp_path, epochs=1, milestones=[1], weight_decay=1e-3)  # its legacy name is the same
    assert other.legacy_run_name == config.legacy_run_name
    assert train(other, quiet=True).paths.name == other.run_name  # trained under its own name, not refused

    step = tiny_config(tmp_path / "b", epochs=2, milestones=[1], weight_decay=5e-4)
    with pytest.MonkeyPatch.context() as monkeypatch:  # cut off after its first epoch: a checkpoint, no JSON
        import sbattn.train.loop as loop

        def reader_gone(history, epochs):
            raise BrokenPipeError(32, "Broken pipe")
        monkeypatch.setattr(loop, "epoch_line", reader_gone)
        with pytest.raises(BrokenPipeError):
            train(step, quiet=True)
    paths = sbattn.records.RunPaths(Path(step.output_dir), step.run_name)
    for suffix in (".ckpt", ".config.json"):
        paths.with_suffix(suffix).rename(paths.output_dir / f"{step.legacy_run_name}{suffix}")
    resumed = train(dataclasses.replace(step, resume=True), quiet=True)
    assert resumed.paths.name == step.legacy_run_name and [h["epoch"] for h in resumed.history] == [1, 2]


def test_unwritable_output_dir_refused_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    import sbattn.train.loop as start
    monkeypatch.setattr(start, "load_cifar10", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(UserError, match="not writable"):
        train(tiny_config(tmp_path, output_dir=str(blocker / "results")), quiet=True)


@pytest.mark.parametrize("checkpoint_steps", [0, 2])  # 2: the step's checkpoint must not save the diverged weights
def test_non_finite_loss_stops_naming_epoch_and_step_keeping_last_checkpoint(tmp_path, monkeypatch,
                                                                             checkpoint_steps):
    import sbattn.train.step as step_module  # where the training step computes its loss
    calls = {"n": 0}
    real = step_module.F.cross_entropy

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls["n"] += 1
        # 32 training steps and one evaluation batch in epoch 1, then the fifth step of epoch 2
        return loss * float("nan") if calls["n"] == 32 + 1 + 5 else loss

    monkeypatch.setattr(step_module.F, "cross_entropy", poisoned)
    config = tiny_config(tmp_path, epochs=3, checkpoint_steps=checkpoint_steps)
    with pytest.raises(UserError, match=r"non-finite loss at epoch 2, step 5.*last good checkpoint is kept"):
        train(config, quiet=True)
    ckpt = load_checkpoint(Path(config.output_dir) / f"{config.run_name}.ckpt", config)
    assert ckpt["epoch"] == 1 and ckpt["step"] == (4 if checkpoint_steps else 0)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_existing_checkpoint_needs_resume(tmp_path):
    config = tiny_config(tmp_path)
    ckpt = Path(config.output_dir) / f"{config.run_name}.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"something")
    with pytest.raises(UserError, match="--resume"):
        train(config, quiet=True)
    assert ckpt.read_bytes() == b"something"


@pytest.mark.parametrize("damage", ["truncated", "other_config", "other_version", "weights_not_checkpoint"])
def test_bad_checkpoints_are_refused_not_overwritten(tmp_path, damage):
    config = tiny_config(tmp_path, epochs=3)
    _run_until_checkpoint(config)
    path = Path(config.output_dir) / f"{config.run_name}.ckpt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
        match, resumed = "damaged", config
    elif damage == "other_config":
        match, resumed = "another configuration", config
        resumed = TrainConfig.from_dict(config.to_dict(), init_lr=0.05)
        path.rename(Path(config.output_dir) / f"{resumed.run_name}.ckpt")
        path = Path(config.output_dir) / f"{resumed.run_name}.ckpt"
    elif damage == "other_version":
        obj = torch.load(path, weights_only=True)
        obj["format"] = 999
        torch.save(obj, path)
        match, resumed = "format 999", config
    else:  # trained weights copied over the checkpoint
        from sbattn.records.checkpoint import save_weights
        save_weights(path, sbattn.vgg16(width=0.0625), config, [], {})
        match, resumed = "not a training checkpoint", config
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=match) as refused:
        train(TrainConfig.from_dict(resumed.to_dict(), resume=True), quiet=True)
    assert refused.value.code == 2
    assert path.read_bytes() == before


def _run_until_checkpoint(config):
    """Train, then fail before the run is finished, leaving its last checkpoint behind."""
    import sbattn.train.loop as train_module
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "_finish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train(config, quiet=True)


def _history_without_timing(path: Path):
    record = json.loads(path.read_text())
    drop = {"seconds", "images_per_sec", "eval_seconds"}
    return [{k: v for k, v in h.items() if k not in drop} for h in record["history"]]


def _weights(path: Path):
    return torch.load(path, weights_only=True)["state_dict"]


def _train_cmd(out, *extra):
    return ["-m", "sbattn", "train", *TINY, *TRAIN_CMD, f"--output-dir={out}", *extra]


TRAIN_CMD = ["--epochs=4", "--milestones=[2,3]", "--seed=3"]
TRAIN_CMD_RUN = run_name(*TINY, *TRAIN_CMD)


def _wait_for(path: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = run_cli(*_train_cmd(out))
    assert proc.returncode == 0, proc.stderr
    return out / TRAIN_CMD_RUN


def _resume_and_compare(out: Path, uninterrupted: Path) -> None:
    """Resume the run in `out` to its end: history and weights must equal the uninterrupted run's."""
    resumed = run_cli(*_train_cmd(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    stem = out / uninterrupted.name
    assert _history_without_timing(Path(f"{stem}.json")) == _history_without_timing(
        Path(f"{uninterrupted}.json"))
    a, b = _weights(Path(f"{stem}.pth")), _weights(Path(f"{uninterrupted}.pth"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_and_resume_is_identical_to_an_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *_train_cmd(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = out / f"{TRAIN_CMD_RUN}.ckpt"
    _wait_for(ckpt, proc)
    time.sleep(0.15)  # into the next epoch
    proc.kill()
    proc.wait()
    assert ckpt.exists()
    _resume_and_compare(out, uninterrupted)


def test_sigint_checkpoints_mid_epoch_exits_130_and_resumes_identically(tmp_path, uninterrupted):
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *_train_cmd(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / f"{TRAIN_CMD_RUN}.ckpt"
    _wait_for(ckpt, proc)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "resume with:" in stdout and "--resume" in stdout
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] >= 1
    _resume_and_compare(out, uninterrupted)


def test_ctrl_c_stops_after_the_step_it_arrives_in_and_resumes_identically(tmp_path, uninterrupted, monkeypatch):
    """Ctrl-C inside an epoch stops at the end of the step under way, not at the epoch's end."""
    import sbattn.train.epoch as pipeline_module
    real_batches = pipeline_module.train_batches

    def ctrl_c_inside_epoch_2(*args, **kwargs):
        for i, batch in enumerate(real_batches(*args, **kwargs)):
            yield batch
            if kwargs["epoch"] == 1 and i == 9:  # arrives as step 10 of 32 is fetched
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(pipeline_module, "train_batches", ctrl_c_inside_epoch_2)
    out = tmp_path / "interrupted"
    assert main(["train", *_train_cmd(out)[3:]]) == 130
    state = torch.load(out / f"{uninterrupted.name}.ckpt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 11)  # epoch 2 (0-based 1) stopped after its step 11
    assert state["partial"]["seen"] == 11 * 32
    monkeypatch.undo()
    _resume_and_compare(out, uninterrupted)


def test_compile_without_a_working_cpp_compiler_is_one_line(tmp_path, monkeypatch, capsys):
    """--compile on a CPU needs a C++ compiler: without one, one line naming it and --compile none, not inductor's
    hundred-line report (the compiler pointed at a missing file, the kernel cache off so that it is asked)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from _runs import one_line
    from sbattn.cli import main
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-c++")))
    torch._dynamo.reset()
    try:
        code = main(["train", "--dataset=fake", "--device=cpu", "--width=0.0625", "--epochs=1", "--milestones=[1]",
                     "--precision=fp32", "--compile=model", "--seed=0", f"--output-dir={tmp_path / 'out'}"])
    finally:
        torch._dynamo.reset()
    line = one_line(capsys.readouterr().err)
    assert code == 1 and "--compile model: torch.compile could not build the step" in line
    assert "no-such-c++" in line and "--compile none" in line
