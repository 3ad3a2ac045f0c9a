"""sbattn in timm by name: the registered models (timm.create_model, list_models, pretrained_cfg, features_only,
checkpoint_path), "sb" as an attention string, registration whichever is imported first, timm's own training
pipeline on an image folder, `--arch timm:NAME` in a suite, and the README's three ways. Interoperability
environment."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
from timm.layers import SEModule  # noqa: E402

import sbattn  # noqa: E402
from sbattn import ShiftBalance  # noqa: E402
from sbattn.cli import main  # noqa: E402
from sbattn.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SB_RESNETS = {"sbresnet18": "seresnet18", "sbresnet34": "seresnet34", "sbresnet50": "seresnet50",
              "sbresnext26d_32x4d": "seresnext26d_32x4d"}
CIFAR = ["vgg16_cifar", "vgg16_sb", "vgg16_se", "resnet20_cifar", "resnet20_sb", "resnet20_se", "resnet56_sb",
         "resnet56_se", "resnet18_cifar_sb", "resnet18_cifar_se"]


def blocks(model: nn.Module, cls=ShiftBalance) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, cls)]


def test_the_timm_under_test_is_the_one_asked_for():
    """make test-interop runs this file again on the oldest timm sbattn[timm] admits, put first on PYTHONPATH: a
    path that did not take would test the newest twice."""
    wanted = os.environ.get("SBATTN_TIMM_VERSION")
    if wanted is None:
        pytest.skip("no SBATTN_TIMM_VERSION: the environment's own timm")
    assert timm.__version__ == wanted


def test_the_models_are_listed_by_timm():
    assert set(SB_RESNETS) | {n for n in CIFAR if "sb" in n} <= set(timm.list_models("*sb*"))
    assert set(CIFAR) <= set(timm.list_models())


@pytest.mark.parametrize("name", SB_RESNETS)
def test_sb_stands_where_timms_se_resnets_have_se_and_as_wide(name):
    with torch.device("meta"):
        sb, se = timm.create_model(name, num_classes=10), timm.create_model(SB_RESNETS[name], num_classes=10)
    widths = [(b.branch[0].in_features, b.branch[0].out_features) for b in blocks(sb)]
    assert widths == [(m.fc1.in_channels, m.fc1.out_channels) for m in blocks(se, SEModule)]  # 1/16, as timm's
    assert not blocks(sb, SEModule) and all(b.branch.branch_norm == "none" for b in blocks(sb))
    assert sb.pretrained_cfg["architecture"] == name and sb.pretrained_cfg["license"] == "mit"


@pytest.mark.parametrize("name", CIFAR)
def test_the_cifar_models_train_and_say_their_input(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    kind = name.rsplit("_", 1)[-1]
    assert len(blocks(model)) > 0 if kind == "sb" else not blocks(model)
    x = torch.randn(4, 3, 32, 32)
    model(x).sum().backward()
    assert model(x).shape == (4, 7)


@pytest.mark.parametrize("name", ["vgg16_sb", "resnet20_se"])
def test_the_cifar_models_take_timms_train_py_arguments_or_refuse_them_in_one_line(name):
    """What timm's train.py passes every model (its defaults) builds the model; a dropout it does not have is
    refused in one line naming the argument, not a TypeError from an attention block."""
    model = timm.create_model(name, num_classes=10, drop_rate=0.0, drop_path_rate=None, drop_block_rate=None,
                              global_pool=None, bn_momentum=None, bn_eps=None, scriptable=None)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    model.set_grad_checkpointing(enable=True)  # train.py's --grad-checkpointing
    model(x).sum().backward()
    final, maps = model.forward_intermediates(x)  # the stages timm's feature_info names, their widths
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in model.feature_info]
    assert model.forward_head(final).shape == (2, 10)
    for option in ({"drop_rate": 0.2}, {"drop_path_rate": 0.1}, {"global_pool": "max"}):
        with pytest.raises(ValueError, match=rf"take {next(iter(option))}=.* as nothing they can do: leave it at"):
            timm.create_model(name, **option)


@pytest.mark.parametrize("name", ["sbresnet18", "vgg16_sb", "resnet20_sb", "resnet18_cifar_se"])
def test_features_only(name):
    model = timm.create_model(name, features_only=True)
    size = 64 if name.startswith("sbresnet") else 32
    maps = model(torch.randn(2, 3, size, size))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [size // m.shape[-1] for m in maps] == model.feature_info.reduction()


def test_pretrained_weights_are_refused_in_one_line():
    with pytest.raises(ValueError, match="sbattn publishes no weights") as error:
        timm.create_model("vgg16_sb", pretrained=True)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("arch, width", [("vgg16", 0.0625), ("resnet20", 0.25)])
def test_a_checkpoint_of_sbattn_train_loads_by_name(tmp_path, arch, width):
    assert main(["train", "--device=cpu", "--dataset=fake", f"--width={width}", "--epochs=1", "--seed=1",
                 f"--arch={arch}", "--precision=fp32", "--activation=sigmoid", f"--output-dir={tmp_path}"]) == 0
    (weights,) = tmp_path.glob("*.pth")
    trained = sbattn.load(weights)
    model = timm.create_model(f"{arch}_sb", width=width, activation="sigmoid", checkpoint_path=str(weights)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))


def test_sb_is_a_string_timm_takes():
    assert timm.layers.get_attn("sb") is sbattn.models.timm_models.TIMM_SB
    assert timm.layers.get_attn("se") is SEModule  # every other string is timm's own
    model = timm.create_model("resnet18", block_args=dict(attn_layer="sb"))
    assert len(blocks(model)) == 8
    with pytest.raises(AssertionError, match="Invalid attn module"):
        timm.layers.get_attn("sbb")


def test_timms_own_names_stay_its_own():
    """Registering overwrites a name timm has (with a warning): none of sbattn's may be one of timm's."""
    code = "import timm, sys; assert 'sbattn' not in sys.modules; print(' '.join(timm.list_models()))"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd="/",
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    ours = set(SB_RESNETS) | set(sbattn.models.timm_models.CIFAR_MODELS)
    assert len(out.stdout.split()) > 1000 and not ours & set(out.stdout.split())
    assert all(timm.models.model_entrypoint(n).__module__ == "sbattn.models.timm_models" for n in ours)


@pytest.mark.parametrize("first", ["sbattn", "timm"])
def test_registered_whichever_is_imported_first(first):
    second = "timm" if first == "sbattn" else "sbattn"
    code = (f"import sys, {first}, {second}, timm\n"
            "assert 'sbresnet18' in timm.list_models('*sb*')\n"
            "m = timm.create_model('resnet50', block_args=dict(attn_layer='sb'))\n"
            "print(sum(type(b).__name__ == 'ShiftBalance' for b in m.modules()))\n")
    if first == "sbattn":
        code = code.replace("import sys,", "import sys; import sbattn; assert 'timm' not in sys.modules; import")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["16"]


def test_a_probe_for_timm_does_not_stop_the_registration():
    # Libraries ask importlib whether timm is there before importing it; the spec they get is never executed.
    code = ("import importlib.util, sys, sbattn\n"
            "assert importlib.util.find_spec('timm') is not None and 'timm' not in sys.modules\n"
            "import timm\n"
            "print(len(timm.list_models('sbresnet*')), timm.layers.get_attn('sb').func.__name__)\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["3", "ShiftBalance"]


def write_folder(root: Path) -> None:
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = torch.randint(0, 256, (40, 40, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")


def test_sbresnet18_trains_in_timms_own_pipeline(tmp_path):
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    write_folder(tmp_path / "train")
    torch.manual_seed(0)
    model = timm.create_model("sbresnet18", num_classes=2)
    config = {**resolve_data_config({}, model=model), "input_size": (3, 32, 32)}
    loader = create_loader(create_dataset("", root=str(tmp_path / "train"), is_training=True), **config,
                           batch_size=4, is_training=True, num_workers=0, use_prefetcher=False, pin_memory=False,
                           persistent_workers=False, device=torch.device("cpu"))  # timm 1.0.21's default: True
    optimizer = create_optimizer_v2(model, "sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=2)
    lambdas = [b.lam.detach().clone() for b in blocks(model)]
    model.train()
    for epoch in range(2):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            assert torch.isfinite(loss)
        scheduler.step(epoch + 1)
    assert all(not torch.equal(a, b.lam) for a, b in zip(lambdas, blocks(model)))


def test_a_suite_compares_attention_on_a_timm_network(tmp_path, capsys):
    code = main(["compare", "--arch=timm:resnet18", "--attention=none,sb,se,eca", "--device=cpu", "--dataset=fake",
                 "--epochs=1", "--seed=0", "--batch_size=128", f"--output-dir={tmp_path}"])
    assert code == 0, capsys.readouterr().err
    names = sorted(p.stem for p in tmp_path.glob("timm-resnet18_*.json"))
    assert len(names) == 4 and not any(":" in p.name for p in tmp_path.iterdir())
    params = {json.loads((tmp_path / f"{n}.json").read_text())["summary"]["params"] for n in names}
    assert len(params) == 4  # four different networks
    assert re.search(r"\| ECA", (tmp_path / "compare.md").read_text())
    sb_run = next(n for n in names if "_True_False_" in n)
    trained = sbattn.load(tmp_path / f"{sb_run}.pth")  # the run's own model, rebuilt from its recipe
    assert trained.config.arch == "timm:resnet18" and len(blocks(trained)) == 8


def test_a_timm_network_with_se_gets_each_kind_in_its_se_places_at_its_widths():
    with torch.device("meta"):
        built = {kind: create_model("timm:seresnet18", attention=kind) for kind in ("none", "sb", "eca", "timm:se")}
    assert not blocks(built["none"], SEModule) and not blocks(built["none"])  # the baseline: no attention
    assert len(blocks(built["sb"])) == len(blocks(built["eca"], timm.layers.EcaModule)) == 8
    assert not blocks(built["sb"], SEModule)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    # the network's own SE widths (1/16), not --attn_ratio's 0.5: SB adds its lambda to timm's SE, nothing more
    assert count(built["sb"]) - count(built["timm:se"]) == sum(b.channels for b in blocks(built["sb"]))
    with pytest.raises(ValueError, match="--attn_ratio 0.25: timm's seresnet18 has SE of its own widths"):
        create_model("timm:seresnet18", attention="sb", ratio=0.25)


@pytest.mark.parametrize("options, message", [
    (dict(arch="timm:no_such_net"), "timm has no model 'no_such_net'"),
    (dict(arch="timm:resnet18", placement="stage"), "keep their own places for attention"),
    (dict(arch="timm:vit_tiny_patch16_224"), "no SE module to replace and takes no attention layer"),
])
def test_what_a_timm_arch_cannot_do_is_refused_in_one_line(options, message):
    with pytest.raises(sbattn.ConfigError, match=message) as error:
        sbattn.TrainConfig(attention="sb", **options)
    assert "\n" not in str(error.value)


def test_run_names_have_no_colon():
    assert sbattn.Recipe(attention="timm:se").run_name == "vgg16_0.5_False_False_tanh_timm-se"
    assert sbattn.Recipe(arch="timm:resnet18", attention="sb").run_name == "timm-resnet18_0.5_True_False_tanh"


def readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_three_ways_run(capsys):
    scope: dict = {}
    exec(readme_block("#### Use SB in your own network"), scope)  # noqa: S102
    shapes = [{k: v.shape for k, v in scope[n].state_dict().items()} for n in ("by_class", "by_string", "by_name")]
    assert shapes[0] == shapes[1] == shapes[2]  # the same network, three ways
    assert describe(scope["by_class"]) == describe(scope["by_string"]) == describe(scope["by_name"])  # one block
    assert len(blocks(scope["by_class"])) == 8 and len(blocks(scope["cifar"])) == 4
    assert {"sbresnet18", "vgg16_sb"} <= set(eval(capsys.readouterr().out))  # noqa: S307


def describe(model: nn.Module) -> list[tuple]:
    """Each SB block of `model`: where, its widths, act, branch norm and whether lambda starts at zero."""
    return [(name, b.channels, b.branch[0].out_features, b.activation, b.branch.branch_norm,
             bool((b.lam == 0).all())) for name, b in model.named_modules() if isinstance(b, ShiftBalance)]


def test_every_timm_door_builds_the_same_sb():
    """sbresnet18 by name, resnet18 with the "sb" string, seresnet18 with its SEs replaced and TIMM_SB as a class:
    one block (docs/interop.md's table), lambda at zero."""
    from sbattn.models.timm_models import TIMM_SB
    by_name = timm.create_model("sbresnet18")
    replaced = timm.create_model("seresnet18")
    sbattn.replace_attention(replaced, "sb")
    by_string = timm.create_model("resnet18", block_args=dict(attn_layer="sb"))
    by_class = timm.create_model("resnet18", block_args=dict(attn_layer=TIMM_SB))
    doors = [describe(m) for m in (by_name, replaced, by_string, by_class)]
    assert len(doors[0]) == 8 and all(d == doors[0] for d in doors), doors
    assert {d[3:] for d in doors[0]} == {("tanh", "none", True)}


@pytest.mark.parametrize("name", ["sbresnet18", "seresnext26t_32x4d"])
def test_sb_in_a_timm_network_starts_as_the_identity(name):
    """timm zero-initialises each residual branch's last BatchNorm so that each block starts as the identity; SB
    after it (by name, or in place of an SE) must pass that zero on, as SE does."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    if name.startswith("se"):
        sbattn.replace_attention(model, "sb")
    seen = []
    for block in blocks(model):
        # cloned: timm adds the shortcut in place
        block.register_forward_hook(lambda m, args, out: seen.append((args[0].clone(), out.clone())))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert len(seen) == len(blocks(model)) > 0
    assert all(not x.any() and not y.any() for x, y in seen)  # a zero branch in, zero out
