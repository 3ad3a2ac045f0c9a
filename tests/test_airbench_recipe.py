"""The airbench preset's training (`--preset airbench`), each piece against a plain restatement of airbench94's
published recipe: the optimiser's decoupled numbers, the per-step schedule, the whitening bias held after its
epochs, lookahead, the alternating flip, the reflect-padded translation, test-time augmentation; and a run of the
whole recipe, stopped mid-epoch and resumed, equal to one never stopped."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sbattn
from sbattn.config import TrainConfig
from sbattn.config.presets import PRESETS, preset_options
from sbattn.data import alternating_flips, augment, sample_params
from sbattn.optim import Lookahead, hold_finished_groups
from sbattn.train.evaluation import tta_logits
from sbattn.train.step import make_optimization

from _runs import ctrl_c_at_step

STEPS_PER_EPOCH = 48  # 50,000 // 1024: airbench drops each epoch's last batch
TOTAL = 476  # ceil(9.9 * 48)


def airbench_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**preset_options("airbench"), "width": 0.125, "device": "cpu", **overrides})


def test_the_preset_is_airbench94s_recipe_and_names_its_runs_apart():
    config = airbench_config(attention="none")
    assert (config.epochs, config.batch_size, config.drop_last, config.tta) == (9.9, 1024, True, 2)
    assert config.total_steps(STEPS_PER_EPOCH) == TOTAL and config.epoch_count == 10
    assert config.steps_in_epoch(9, STEPS_PER_EPOCH) == TOTAL - 9 * 48 == 44  # the last epoch in part
    plain = TrainConfig(arch="airbench", attention="none", width=0.125, device="cpu")
    assert config.run_name.startswith(plain.run_name) and config.run_name != plain.run_name  # recipes apart
    assert airbench_config(attention="none", label_smoothing=0.1).run_name != config.run_name
    assert PRESETS["airbench"]["jobs"] == 1


def test_decoupled_sgd_and_the_warmup_warmdown_schedule_step_as_airbench():
    config = airbench_config(attention="se")
    model = sbattn.create_model("airbench", attention="se", width=0.125)
    made = make_optimization(model, config, STEPS_PER_EPOCH)
    assert made.per_batch and made.lookahead is not None
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    lr, decay = 11.5 / kilostep, 0.0153 * 1024 / kilostep
    groups = made.optimizer.param_groups
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    biases = next(g for g in groups if id(g["params"][0]) in norm_biases)
    whiten = next(g for g in groups if g["params"][0] is model.whiten.bias)
    rest = groups[0]
    assert biases["initial_lr"] == pytest.approx(64 * lr) and rest["initial_lr"] == pytest.approx(lr)
    assert all(g["momentum"] == 0.85 and g["nesterov"] for g in groups)
    for g in groups:  # the decay's strength is the same in every group, whatever its rate
        assert g["initial_lr"] * g["weight_decay"] == pytest.approx(decay)
    assert set(map(id, model.parameters())) == {id(p) for g in groups for p in g["params"]}

    def airbench_factor(step):  # airbench94.py's get_lr
        warmup = int(TOTAL * 0.23)
        if step < warmup:
            return 0.2 * (1 - step / warmup) + step / warmup
        frac = (step - warmup) / (TOTAL - warmup)
        return (1 - frac) + 0.07 * frac

    seen = {}
    for step in range(TOTAL + 1):
        hold_finished_groups(made.optimizer, step)
        seen[step] = (rest["lr"], biases["lr"], whiten["lr"])
        made.optimizer.step()
        made.scheduler.step()
    for step in (0, 1, 50, 108, 109, 110, 143, 144, 300, 475, 476):
        assert seen[step][0] == pytest.approx(lr * airbench_factor(step), rel=1e-12)
        assert seen[step][1] == pytest.approx(64 * lr * airbench_factor(step), rel=1e-12)
        # the whitening bias trains for 3 epochs (144 steps), then holds still
        assert seen[step][2] == (pytest.approx(lr * airbench_factor(step)) if step < 144 else 0.0)


def test_a_held_group_leaves_its_parameters_exactly_as_they_are():
    p = nn.Parameter(torch.randn(5))
    optimizer = torch.optim.SGD([dict(params=[p], train_steps=2)], lr=0.5, momentum=0.9, nesterov=True,
                                weight_decay=0.1)
    for step in range(4):
        hold_finished_groups(optimizer, step)
        before = p.detach().clone()
        p.grad = torch.randn(5)
        optimizer.step()
        assert torch.equal(p, before) == (step >= 2)


def test_lookahead_averages_every_few_steps_and_sets_the_weights_to_the_average_at_the_end():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    lookahead = Lookahead(model, every=5, decay=0.95, total_steps=12)
    tensors = lambda: [t.detach().clone() for t in model.state_dict().values() if t.is_floating_point()]  # noqa
    average = tensors()
    for step in range(1, 13):
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.add_(torch.randn_like(t))
        current = tensors()
        lookahead.update(step)
        if step % 5 == 0:  # airbench: ema.lerp_(w, 1 - decay); w.copy_(ema), decay = 0.95**5 * (step/total)**3
            keep = 0.95 ** 5 * (step / 12) ** 3
            average = [a + (1 - keep) * (c - a) for a, c in zip(average, current)]
            for a, t in zip(average, tensors()):
                torch.testing.assert_close(t, a)
        elif step == 12:
            for a, t in zip(average, tensors()):
                torch.testing.assert_close(t, a)  # at the end the weights become the average
        else:
            for c, t in zip(current, tensors()):
                assert torch.equal(c, t)  # between updates the weights are the optimiser's


def test_the_alternating_flip_mirrors_each_image_in_every_other_epoch():
    flips = torch.stack([alternating_flips(4000, seed=7, epoch=e, device=torch.device("cpu")) for e in range(4)])
    assert 0.46 < flips[0].float().mean() < 0.54  # epoch 0: each image at random
    assert torch.equal(flips[1], ~flips[0]) and torch.equal(flips[2], flips[0]) and torch.equal(flips[3], ~flips[0])
    assert not torch.equal(flips[0], alternating_flips(4000, seed=8, epoch=0, device=torch.device("cpu")))


def test_the_translation_is_uniform_up_to_two_pixels_and_reflect_padded():
    g = torch.Generator().manual_seed(0)
    params = sample_params(20000, g, "airbench")
    for shift in (params.dy, params.dx):
        counts = torch.bincount(shift + 2, minlength=5).float() / 20000
        assert shift.min() == -2 and shift.max() == 2 and (counts - 0.2).abs().max() < 0.015
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    flip = torch.rand(64, generator=torch.Generator().manual_seed(1)) < 0.5
    out = augment(images, torch.Generator().manual_seed(2), "airbench", flip=flip)
    drawn = sample_params(64, torch.Generator().manual_seed(2), "airbench")  # the same draws
    for i in range(64):  # airbench: flip, pad 2 reflect, crop at (2 + dy, 2 + dx)
        image = images[i].flip(-1) if flip[i] else images[i]
        padded = F.pad(image[None].float(), (2, 2, 2, 2), mode="reflect")[0]
        y, x = 2 + drawn.dy[i], 2 + drawn.dx[i]
        assert torch.equal(out[i], padded[:, y:y + 8, x:x + 8].to(torch.uint8))


def test_tta_level_2_weighs_the_six_views_as_airbench():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(3, 3, 8, 8)
    mirror = lambda v: 0.5 * model(v) + 0.5 * model(v.flip(-1))  # noqa: E731
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    expected = 0.5 * mirror(x) + 0.5 * (mirror(padded[:, :, 0:8, 0:8]) + mirror(padded[:, :, 2:10, 2:10])) / 2
    torch.testing.assert_close(tta_logits(model, x, 2), expected)
    torch.testing.assert_close(tta_logits(model, x, 1), mirror(x))
    assert torch.equal(tta_logits(model, x, 0), model(x))


RUN = ["train", "--preset=airbench", "--dataset=fake", "--device=cpu", "--width=0.0625", "--batch_size=64",
       "--precision=fp32", "--epochs=2.5", "--whiten-bias-epochs=1", "--seed=1", "--eval-batch-size=256"]


def test_the_recipe_stopped_mid_epoch_resumes_to_the_run_never_stopped(tmp_path, monkeypatch):
    """16 steps an epoch (1,024 fake images, the last batch dropped), 40 in all: stopped at step 23, past the
    whitening bias's freeze and a lookahead update, inside the schedule's warm-down."""
    from sbattn.cli import main
    import sbattn.train.loop as start
    assert main([*RUN, f"--output-dir={tmp_path / 'whole'}"]) == 0
    monkeypatch.setattr(start, "make_step", ctrl_c_at_step(start.make_step, 23))
    assert main([*RUN, f"--output-dir={tmp_path / 'cut'}"]) == 130
    monkeypatch.undo()
    assert main([*RUN, f"--output-dir={tmp_path / 'cut'}", "--resume"]) == 0
    (whole,), (cut,) = (list((tmp_path / d).glob("*.json")) for d in ("whole", "cut"))
    a, b = json.loads(whole.read_text()), json.loads(cut.read_text())
    timing = {"seconds", "images_per_sec", "eval_seconds"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in a["history"]] == \
        [{k: v for k, v in h.items() if k not in timing} for h in b["history"]]
    assert len(a["history"]) == 3 and a["summary"]["final_eval_tta"] == 2 and "final_eval_acc_no_tta" in a["summary"]
    wa, wb = (torch.load(p.with_suffix(".pth"), weights_only=True)["state_dict"] for p in (whole, cut))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["summary"]["final_eval_acc"] == b["summary"]["final_eval_acc"]


def _figures(out, pattern="airbench_*.json"):
    found = {}
    for record in sorted(out.glob(pattern)):
        history = json.loads(record.read_text())["history"]
        weights = torch.load(record.with_suffix(".pth"), weights_only=True)["state_dict"]
        found[record.stem] = ([(h["train_loss"], h["eval_loss"], h["lr"]) for h in history], weights)
    return found


def _relative_gap(a, b) -> float:
    figures = [abs(x - y) / max(abs(y), 1e-12) for ra, rb in zip(a[0], b[0]) for x, y in zip(ra, rb)]
    names = [k for k, v in b[1].items() if v.is_floating_point()]
    difference = torch.cat([(a[1][k].double() - b[1][k].double()).flatten() for k in names])
    scale = torch.cat([b[1][k].double().flatten() for k in names])
    return max(figures + [(difference.norm() / scale.norm()).item()])


FAST = [arg for arg in RUN if arg != "--epochs=2.5"] + ["--epochs=1.5", "--init_lr=1.0"]


def test_the_recipe_fused_over_seeds_and_compiled_trains_as_lone_eager_runs(tmp_path, monkeypatch):
    """What a lent GPU runs: --pack fused (the seeds as one batched model) within 1e-5 of lone runs, and the whole
    step compiled (--compile step) within rounding of the same step uncompiled; at a rate that barely moves the
    weights, so that the comparison is of the arithmetic, not of chaos."""
    from sbattn.cli import main
    import sbattn.train.step as step_module
    together, alone = tmp_path / "fused", tmp_path / "alone"
    assert main(["compare", *FAST[1:], "--attention=sb", "--seeds=2", "--pack=fused", "--jobs=2",
                 f"--output-dir={together}"]) == 0
    for seed in (1, 2):
        assert main([*[a for a in FAST if not a.startswith("--seed")], "--attention=sb", "--activation=sigmoid",
                     f"--seed={seed}", f"--output-dir={alone}"]) == 0
    fused_runs, lone_runs = _figures(together), _figures(alone)
    assert len(lone_runs) == 2 and len(fused_runs) == 2
    for (name, run), (lone_name, lone) in zip(sorted(fused_runs.items()), sorted(lone_runs.items())):
        assert name == lone_name and _relative_gap(run, lone) < 1e-5, (name, lone_name)
    assert _relative_gap(*fused_runs.values()) > 1e-3  # two seeds are told apart: the comparison can fail

    # --compile step draws a whole epoch's batches at once: its uncompiled twin takes the same path
    compiled = [*FAST, "--init_lr=0.1", "--attention=sb", "--compile=step"]
    assert main([*compiled, f"--output-dir={tmp_path / 'compiled'}"]) == 0
    monkeypatch.setattr(step_module, "compile_step", lambda fn, device: fn)
    assert main([*compiled, f"--output-dir={tmp_path / 'eager'}"]) == 0
    (run,), (eager,) = _figures(tmp_path / "compiled").values(), _figures(tmp_path / "eager").values()
    assert 0 < _relative_gap(run, eager) < 1e-4
