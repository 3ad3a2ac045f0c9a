import pytest
import torch

from sbattn import ConfigError, TrainConfig
from sbattn.cli import build_parser
from sbattn.cli.options import config_from_args


def test_reference_defaults():
    c = TrainConfig()
    assert (c.attn_ratio, c.use_sb, c.use_se, c.activation, c.epochs, c.batch_size, c.init_lr, c.gamma,
            c.milestones, c.weight_decay) == (0.5, True, False, "tanh", 80, 64, 0.1, 0.2, [40, 60, 80], 9e-6)
    assert c.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert c.run_name == "vgg16_0.5_True_False_tanh"


@pytest.mark.parametrize("field, value, words", [
    ("use_se", True, "use_sb=True and use_se=True"),
    ("activation", "gelu", "tanh, sigmoid, relu, softmax, linear"),
    ("attn_ratio", 0.001, "attn_ratio=0.001"),
    ("placement", "block", "VGG supports placement stage or layer"),
    ("epochs", 0, "epochs=0"),
    ("batch_size", 1, "batch_size=1"),
    ("init_lr", 0.0, "init_lr=0.0"),
    ("init_lr", -0.1, "must be > 0"),
    ("gamma", 0.0, "gamma=0.0: must be in (0, 1]"),
    ("gamma", 1.5, "gamma=1.5"),
    ("milestones", [60, 40], "milestones=[60, 40]"),
    ("milestones", [0, 10], "increasing"),
    ("milestones", [10.5], "integers"),
    ("weight_decay", -1e-4, "weight_decay=-0.0001"),
    ("device", "tpu", "device='tpu'"),
    ("precision", "int8", "precision='int8'"),
    ("width", 0.0, "width=0.0"),
    # values that once passed and then crashed after the data had loaded
    ("init_lr", 1e300, "init_lr=1e+300: must be > 0 and at most 3.403e+38"),
    ("init_lr", 3.5e38, "init_lr=3.5e+38"),
    ("weight_decay", 1e300, "weight_decay=1e+300"),
    ("weight_decay", float("inf"), "weight_decay=inf: must be a finite number"),
    ("attn_ratio", float("inf"), "attn_ratio=inf: must be a finite number"),
    ("attn_ratio", float("nan"), "attn_ratio=nan"),
    ("attn_ratio", 1e9, "attn_ratio=1000000000.0: must be > 0 and at most 64"),
    ("width", float("inf"), "width=inf"),
    ("width", 1e6, "width=1000000.0: must be > 0 and at most 64"),
    ("width", 12.0, "1.17e+09 parameters, more than the 1e+09"),
    ("seed", 2**64, "seed=18446744073709551616: must be an integer from 0 to 9223372036854775807"),
    ("epochs", "3", "epochs='3': must be a number"),
    ("init_lr", "0.1", "init_lr='0.1': must be a number"),
    ("data_dir", 7, "data_dir=7: must be a str"),
    ("milestones", 40, "milestones=40: must be a list of integers"),
    ("init_lr", 10**400, "must be a finite number"),
    ("overwrite", True, "--overwrite starts the run afresh, --resume continues it"),
])
def test_each_bad_value_is_one_line_naming_it(field, value, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{field: value, **({"resume": True} if field == "overwrite" else {})})
    message = str(err.value)
    assert words in message and "\n" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_suggests_cpu():
    with pytest.raises(ConfigError, match="CUDA is not available.*--device=cpu"):
        TrainConfig(device="cuda")


def test_baseline_ignores_ratio():
    # with no attention there is no hidden layer to empty
    assert TrainConfig(use_sb=False, attn_ratio=0.001).attention == "none"
    with pytest.raises(ConfigError, match="attn_ratio=nan"):  # but a ratio is a number: it names the run's files
        TrainConfig(use_sb=False, attn_ratio=float("nan"))


ISSUE_VALUES = ["--init_lr=1e300", "--init_lr=3.5e38", "--weight_decay=1e300", "--attn_ratio=inf", "--width=inf",
                "--width=1e6", "--attn_ratio=1e9", "--seed=18446744073709551616", "--attn_ratio=nan"]


@pytest.mark.parametrize("command, bad", [("train", bad) for bad in ISSUE_VALUES]
                         + [("summary", bad) for bad in ISSUE_VALUES if bad.startswith(("--width", "--attn_ratio"))])
def test_the_cli_refuses_what_the_run_cannot_take_in_one_line(command, bad, tmp_path, capsys):
    from sbattn.cli import main
    argv = [command, bad] + (["--device=cpu", "--dataset=fake", f"--output-dir={tmp_path}"] if command == "train"
                             else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and bad.split("=")[0].lstrip("-") in err
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_run_name_tells_seeds_and_variants_apart():
    a = TrainConfig(seed=1).run_name
    b = TrainConfig(seed=2).run_name
    assert a != b and a.startswith("vgg16_0.5_True_False_tanh")
    assert TrainConfig(use_sb=False, use_se=True).run_name == "vgg16_0.5_False_True_tanh"
    assert TrainConfig(placement="layer").run_name != TrainConfig().run_name


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_cli_parses_the_reference_flags():
    c = parse("--device=cpu", "--attn_ratio=0.25", "--use_sb=False", "--use_se=True", "--activation='relu'",
              "--epochs=3", "--batch_size=32", "--init_lr=0.05", "--gamma=0.5", "--milestones=[1,2]",
              "--weight_decay=1e-4")
    assert (c.attn_ratio, c.use_sb, c.use_se, c.activation, c.epochs, c.batch_size, c.init_lr, c.gamma,
            c.milestones, c.weight_decay) == (0.25, False, True, "relu", 3, 32, 0.05, 0.5, [1, 2], 1e-4)


def test_cli_accepts_both_spellings_and_bare_booleans():
    c = parse("--batch-size", "16", "--data_dir", "/tmp/x", "--use_sb", "--resume")
    assert c.batch_size == 16 and c.data_dir == "/tmp/x" and c.use_sb and c.resume


def test_cli_bad_type_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--epochs=ten"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--epochs" in err and len(err.splitlines()) == 1


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--attn_ratio", "--use_sb", "--milestones", "--weight_decay", "--data-dir", "--output-dir",
                 "--seed", "--width", "--eval-every", "--precision", "--resume", "--download", "--dataset"):
        assert flag in out
    assert "(default: [40, 60, 80])" in " ".join(out.split())


# ---------------------------------------------------------------- --config FILE

def write_json(path, values):
    import json
    path.write_text(json.dumps(values))
    return str(path)


def test_a_json_file_sets_options_and_flags_win(tmp_path):
    path = write_json(tmp_path / "run.json", {"epochs": 5, "width": 0.5, "milestones": [2, 4], "use_sb": False,
                                              "data-dir": "/data", "device": "cpu"})
    c = parse("--config", path, "--epochs", "3")
    assert (c.epochs, c.width, c.milestones, c.attention, c.data_dir) == (3, 0.5, [2, 4], "none", "/data")
    assert parse("--epochs=3", f"--config={path}").epochs == 3  # wherever the flag stands


def test_a_finished_runs_json_reruns_that_run(tmp_path):
    ran = TrainConfig(device="cpu", dataset="fake", width=0.25, epochs=7, milestones=[3, 5], attention="se",
                      init_lr=0.05, output_dir=str(tmp_path / "out"))
    path = write_json(tmp_path / "run.json", {"summary": {"complete": True, "config": ran.to_dict(), "seed": 1234},
                                              "history": [{"epoch": 1}]})
    assert parse("--config", path) == TrainConfig.from_dict(ran.to_dict(), seed=1234)  # the seed it drew, too
    assert parse("--config", path, "--seed", "5").seed == 5


def test_a_toml_file(tmp_path):
    path = tmp_path / "quick.toml"
    path.write_text('epochs = 4\nmilestones = [2, 3]\nwidth = 1\nactivation = "sigmoid"\nuse-sb = true\n'
                    'device = "cpu"\nweight_decay = 5e-4\n')
    c = parse("--config", str(path))
    assert (c.epochs, c.milestones, c.width, c.activation, c.attention, c.weight_decay) == (
        4, [2, 3], 1.0, "sigmoid", "sb", 5e-4)


@pytest.mark.parametrize("content, words", [
    ({"epoch": 3, "lr": 0.1, "width": 0.5}, "unknown option(s) epoch, lr"),
    ({"epochs": "ten"}, "epochs = 'ten'"),
    ({"milestones": [10.5]}, "milestones = [10.5]"),
    ({"use_sb": "maybe"}, "use_sb = 'maybe'"),
    ({"width": [1, 2]}, "expected a single value"),
    ({"gamma": 2}, "gamma=2"),  # TrainConfig's own validation, as for the flag
    ([1, 2], "expected a JSON object"),
])
def test_a_bad_file_is_one_line_naming_what_is_wrong_before_any_work(tmp_path, capsys, content, words):
    from sbattn.cli import main
    path = write_json(tmp_path / "bad.json", content)
    assert main(["train", "--config", path, "--device=cpu", f"--output-dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and err.startswith("sbattn train: error:")
    assert not (tmp_path / "out").exists()


def test_toml_on_python_3_10_says_so(tmp_path, monkeypatch):
    import sys
    path = tmp_path / "run.toml"
    path.write_text("epochs = 4\n")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10, which has no tomllib
    with pytest.raises(ConfigError, match="TOML needs Python 3.11"):
        parse("--config", str(path))


def test_a_suite_takes_the_shared_options_from_the_file(tmp_path):
    from sbattn.cli import suites as cli
    from sbattn.experiments import variants
    path = write_json(tmp_path / "run.json", {"epochs": 5, "width": 0.125, "attention": "se", "use_sb": False,
                                              "use_se": True, "resume": False, "seed": 3, "activation": "relu"})
    args = build_parser().parse_args(["compare", "--preset", "quick", "--config", path, "--width", "0.5",
                                      "--seeds", "2"])
    c = cli.base_config(args, variants.COMPARE)
    quick = variants.PRESETS["quick"]
    assert (c.epochs, c.width, c.milestones) == (5, 0.5, quick["milestones"])  # file over preset, flags over both
    assert c.activation == "relu" and c.resume is True  # compare's SB activation; resume: the suite's
    assert cli.seed_list(args) == [3, 4]
    args = build_parser().parse_args(["ablate", "--config", path])
    assert cli.base_config(args, variants.ABLATION).activation == "tanh"  # ablate sets the activation per row


def test_attention_is_the_reference_flags_by_another_name():
    for kind, use_sb, use_se in (("none", False, False), ("sb", True, False), ("se", False, True)):
        by_name = TrainConfig(attention=kind)
        by_flags = TrainConfig(use_sb=use_sb, use_se=use_se)
        assert (by_name.use_sb, by_name.use_se, by_flags.attention) == (use_sb, use_se, kind)
        assert by_name == by_flags and by_name.run_name == by_flags.run_name
    # --attention wins over the reference's default use_sb=True
    assert config_from_args(build_parser().parse_args(["train", "--attention", "se"])).run_name == \
        "vgg16_0.5_False_True_tanh"


def test_choices_come_from_the_registries(attention_registry, capsys):
    import sbattn
    from torch import nn

    @sbattn.register_attention("identity_block")
    class IdentityBlock(nn.Module):
        def __init__(self, channels, ratio=0.5):
            super().__init__()

        def forward(self, x):
            return x

    config = TrainConfig(attention="identity_block", device="cpu")
    assert config.run_name == "vgg16_0.5_False_False_tanh_identity_block"
    with pytest.raises(ConfigError, match="attention='nope': must be one of none, sb, se, .*identity_block"):
        TrainConfig(attention="nope")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for listed in ("one of none, sb, se", "identity_block", "one of " + ", ".join(sbattn.list_models()),
                   "one of tanh, sigmoid, relu, softmax, linear", "one of auto, stage, block, layer"):
        assert listed in help_text, listed


def test_old_spellings_still_work():
    assert TrainConfig(augment="seed").augment == "reference"
    from sbattn.config import recipe_differences
    saved = TrainConfig(device="cpu").to_dict()
    old = {k: v for k, v in saved.items() if k != "attention"} | {"augment": "seed"}  # as 0.1.0 wrote it
    assert recipe_differences(old, TrainConfig(device="cpu")) == []
    assert recipe_differences(old, TrainConfig(device="cpu", attention="se")) == [
        "use_sb True there, False now", "use_se False there, True now", "attention 'sb' there, 'se' now"]


def test_compile_modes_and_the_former_boolean():
    assert TrainConfig().compile == "none"
    assert [parse(*flags).compile for flags in ([], ["--compile"], ["--compile", "step"], ["--compile=model"],
                                               ["--compile=True"], ["--compile=False"], ["--compile", "--epochs=3"])] \
        == ["none", "model", "step", "model", "model", "none", "model"]
    # A configuration saved when --compile was a boolean (a checkpoint's, a finished run's JSON) still loads.
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "compile": True}).compile == "model"
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "compile": False}).compile == "none"
    with pytest.raises(ConfigError, match="compile='graph': must be one of none, model, step"):
        TrainConfig(compile="graph")
