import pytest
import torch

from sbattn import ConfigError, TrainConfig
from sbattn.cli import build_parser
from sbattn.engine.options import config_from_args


def test_seed_defaults():
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
    ("epochs", "3", "epochs='3': must be an integer"),
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


def test_cli_parses_the_seed_flags():
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
