"""The blocks follow PyTorch's and timm's layer conventions (timm itself is tested in tests/interop): factory
arguments, timm's keyword names, and the calls timm makes to an attention or SE layer. And the zoo's kinds
without timm: listed, and a one-line error naming the extra when built."""
import functools
import sys

import pytest
import torch
from torch import nn

import sbattn
from sbattn import ConfigError, ShiftBalance, SqueezeExcite, create_attention
from sbattn.cli import main

BLOCKS = [ShiftBalance, SqueezeExcite]


def hidden(block) -> int:
    return block.branch[0].out_features


@pytest.mark.parametrize("cls", BLOCKS)
def test_factory_arguments_reach_every_parameter_and_buffer(cls):
    block = cls(16, device="meta", dtype=torch.float64)
    tensors = list(block.parameters()) + [b for b in block.buffers() if b.is_floating_point()]
    assert len(tensors) > 4 and all(t.device.type == "meta" and t.dtype == torch.float64 for t in tensors)
    assert all(b.device.type == "meta" for b in block.buffers())  # num_batches_tracked stays an integer


@pytest.mark.parametrize("cls", BLOCKS)
def test_timm_names_for_the_hidden_width(cls):
    assert hidden(cls(64)) == 32  # the reference's default, ratio 0.5
    assert hidden(cls(64, rd_ratio=0.25)) == 16
    assert hidden(cls(64, ratio=0.5, rd_ratio=0.125)) == 8  # a timm model passes its own: it wins
    assert hidden(cls(64, rd_channels=5)) == 5
    assert hidden(cls(60, rd_ratio=0.25, rd_divisor=8)) == 16  # 15 to the nearest multiple of 8, as timm's SE
    assert hidden(cls(20, rd_ratio=0.1, rd_divisor=8)) == 8  # never below the divisor


@pytest.mark.parametrize("cls", BLOCKS)
@pytest.mark.parametrize("act_layer, expected", [(nn.SiLU, nn.SiLU), ("gelu", nn.GELU), (None, nn.ReLU)])
def test_act_layer_is_the_hidden_activation(cls, act_layer, expected):
    block = cls(16, act_layer=act_layer)
    assert type(block.branch[2]) is expected
    with pytest.raises(ValueError, match="unknown act_layer 'elu2'"):
        cls(16, act_layer="elu2")


def test_gate_layer_is_sbs_activation_by_name_or_module_class():
    torch.manual_seed(0)
    by_name = ShiftBalance(8, gate_layer="sigmoid").eval()
    assert by_name.activation == "sigmoid" and isinstance(by_name.act, nn.Sigmoid)
    by_class = ShiftBalance(8, gate_layer=nn.Hardsigmoid).eval()
    x = torch.randn(2, 8, 4, 4)
    a = nn.functional.hardsigmoid(by_class.branch(x.mean((2, 3))))
    torch.testing.assert_close(by_class(x), x + (by_class.lam * a)[:, :, None, None])


def test_gate_layer_replaces_ses_sigmoid():
    torch.manual_seed(0)
    block = SqueezeExcite(8, gate_layer=nn.Hardsigmoid).eval()
    x = torch.randn(2, 8, 4, 4)
    gate = nn.functional.hardsigmoid(block.branch(x.mean((2, 3))))
    torch.testing.assert_close(block(x), x * gate[:, :, None, None])


@pytest.mark.parametrize("layer", [ShiftBalance, SqueezeExcite, functools.partial(ShiftBalance, activation="sigmoid")])
def test_the_calls_timm_makes_to_an_attention_layer(layer):
    # ResNet's blocks: create_attn(attn_layer, channels, device=, dtype=); EfficientNet's builder first probes
    # layer(8, rd_ratio=1.0), then builds layer(mid_chs, act_layer=..., rd_ratio=se_ratio, device=, dtype=).
    assert isinstance(layer(64, device=None, dtype=None), (ShiftBalance, SqueezeExcite))
    assert hidden(layer(8, rd_ratio=1.0)) == 8
    block = layer(96, act_layer=nn.SiLU, rd_ratio=0.25, device="cpu", dtype=torch.float32)
    assert hidden(block) == 24 and isinstance(block.branch[2], nn.SiLU)
    assert block.train()(torch.randn(2, 96, 3, 3)).shape == (2, 96, 3, 3)


def test_the_zoo_is_listed_without_timm():
    assert {"eca", "cbam", "gc", "gca"} <= set(sbattn.list_attention())


@pytest.fixture
def no_timm(monkeypatch):
    """As on a machine without timm, whether or not this one has it."""
    for name in ("timm", "timm.layers", "timm.layers.eca", "timm.layers.cbam", "timm.layers.global_context",
                 "timm.layers.squeeze_excite"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("kind", ["eca", "cbam", "gc", "gca", "timm:se"])
def test_a_zoo_block_without_timm_is_one_line_naming_the_extra(kind, no_timm):
    with pytest.raises(ConfigError) as error:
        create_attention(kind, 16, ratio=0.5)
    message = str(error.value)
    assert 'pip install "sbattn[timm]"' in message and repr(kind) in message and "\n" not in message
    with pytest.raises(ConfigError, match="sbattn.timm"):
        sbattn.attach(nn.Sequential(nn.Conv2d(3, 8, 1)), kind, where=nn.Conv2d)


def test_the_command_line_says_which_extra_before_any_work(no_timm, tmp_path, capsys):
    code = main(["train", "--attention", "gca", "--dataset", "fake", "--epochs", "1", "--device", "cpu",
                 "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and 'pip install "sbattn[timm]"' in err
    assert list(tmp_path.iterdir()) == []


def test_a_timm_architecture_without_timm_is_one_line_naming_the_extra(no_timm, tmp_path, capsys):
    code = main(["train", "--arch", "timm:resnet18", "--dataset", "fake", "--epochs", "1", "--device", "cpu",
                 "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "arch 'timm:resnet18' is timm's, and timm" in err
    assert 'pip install "sbattn[timm]"' in err and list(tmp_path.iterdir()) == []


def test_import_sbattn_imports_no_timm():
    import subprocess
    code = "import sys, sbattn; print('timm' in sys.modules, 'torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False",
                                                                                                          "False"]
