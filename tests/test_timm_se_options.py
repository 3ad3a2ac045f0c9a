"""timm's SE keyword arguments on SB and SE (each mapped, or refused in one line), the branch's norm (a batch of
1 trains without BatchNorm), and TorchScript of the blocks, the models and attach. timm itself: tests/interop."""
import functools

import pytest
import torch
from torch import nn

import sbattn
from sbattn import ShiftBalance, SqueezeExcite

BLOCKS = [ShiftBalance, SqueezeExcite]
# torch.jit.script works, and PyTorch says it is deprecated (for torch.export): docs/interop.md.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


def gate_of(block: nn.Module) -> nn.Module:
    return block.act if isinstance(block, ShiftBalance) else block.gate


def batchnorms(block: nn.Module) -> list[int]:
    return [i for i, layer in enumerate(block.branch) if isinstance(layer, nn.BatchNorm1d)]


@pytest.mark.parametrize("cls", BLOCKS)
def test_gate_layer_by_the_names_timm_gives_it(cls):
    torch.manual_seed(0)
    block = cls(8, gate_layer="hard_sigmoid").eval()
    assert isinstance(gate_of(block), nn.Hardsigmoid)
    x = torch.randn(2, 8, 4, 4)
    a = nn.functional.hardsigmoid(block.branch(x.mean((2, 3))))
    expected = x + (block.lam * a)[:, :, None, None] if cls is ShiftBalance else x * a[:, :, None, None]
    torch.testing.assert_close(block(x), expected)
    assert isinstance(gate_of(cls(8, gate_layer="identity")), nn.Identity)
    with pytest.raises(ValueError, match="unknown activation 'hard_tanh2'"):
        cls(8, gate_layer="hard_tanh2")


@pytest.mark.parametrize("cls", BLOCKS)
def test_mobilenetv3s_se_call_force_act_layer_and_rd_round_fn(cls):
    # timm's MobileNetV3: partial(SqueezeExcite, gate_layer='hard_sigmoid', force_act_layer=nn.ReLU,
    # rd_round_fn=round_channels), then layer(mid_chs, rd_ratio=0.25, act_layer=<the block's Hardswish>).
    layer = functools.partial(cls, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU,
                              rd_round_fn=lambda v: int(v) + 6)
    block = layer(72, rd_ratio=0.25, act_layer=nn.Hardswish)
    assert block.branch[0].out_features == 24  # rd_round_fn(18), not int(0.25 * 72) = 18
    assert type(block.branch[2]) is nn.ReLU  # forced over the block's own activation
    assert isinstance(gate_of(block), nn.Hardsigmoid)
    assert cls(72, rd_ratio=0.25, act_layer=nn.Hardswish).branch[0].out_features == 18  # without: as before
    assert cls(64, rd_channels=5, rd_round_fn=round).branch[0].out_features == 5  # rd_channels wins, as in timm


@pytest.mark.parametrize("cls", BLOCKS)
def test_norm_layer_maps_to_the_hidden_batchnorm_or_is_refused(cls):
    assert batchnorms(cls(16)) == [1, 4]  # the reference's: after both layers
    assert batchnorms(cls(16, norm_layer=nn.BatchNorm2d)) == [1]  # where timm's SEModule puts it (ReXNet)
    assert batchnorms(cls(16, branch_norm="hidden_bn")) == [1]
    assert batchnorms(cls(16, branch_norm="none")) == batchnorms(cls(16, use_bn=False)) == []
    assert "branch_norm" not in repr(cls(16)) and "branch_norm=none" in repr(cls(16, branch_norm="none"))
    for wrong, match in [(dict(norm_layer=nn.LayerNorm), "only BatchNorm applies"),
                         (dict(norm_layer=nn.BatchNorm2d, branch_norm="none"), "asks for branch_norm='hidden_bn'"),
                         (dict(branch_norm="layer"), "unknown branch_norm 'layer'"),
                         (dict(round_chs_fn=round), "not an SE layer's option; give the hidden width's rounding")]:
        with pytest.raises(ValueError, match=match) as error:
            cls(16, **wrong)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("cls", BLOCKS)
def test_a_batch_of_one_trains_without_batchnorm_in_the_branch(cls):
    torch.manual_seed(0)
    block = cls(8, branch_norm="none").train()
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    block(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    with pytest.raises(ValueError, match="branch_norm='none'"):
        cls(8).train()(torch.randn(1, 8, 4, 4))  # the reference's branch: the one-line reason, and the way out


def test_the_reference_branch_is_unchanged_by_the_new_options():
    torch.manual_seed(0)
    old = ShiftBalance(16)
    torch.manual_seed(0)
    new = ShiftBalance(16, branch_norm="bn", norm_layer=None, rd_round_fn=None, force_act_layer=None)
    assert list(old.state_dict()) == list(new.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


def scripted_equal(model: nn.Module, x: torch.Tensor) -> bool:
    model.eval()
    with torch.no_grad():
        expected = model(x)
        return torch.equal(torch.jit.script(model)(x), expected)


@pytest.mark.parametrize("activation", sbattn.list_activations())
@pytest.mark.parametrize("branch_norm", ["bn", "hidden_bn", "none"])
def test_torchscript_takes_sb_with_every_activation_and_norm(activation, branch_norm):
    torch.manual_seed(0)
    block = ShiftBalance(16, activation=activation, branch_norm=branch_norm)
    assert scripted_equal(block, torch.randn(3, 16, 5, 5))


@pytest.mark.parametrize("name, attention", [("vgg16", "sb"), ("vgg16", "se"), ("resnet20", "sb")])
def test_torchscript_takes_the_models(name, attention):
    torch.manual_seed(0)
    model = sbattn.create_model(name, attention=attention, width=0.125 if name == "vgg16" else 1.0)
    assert scripted_equal(model, torch.randn(2, 3, 32, 32))


def test_torchscript_takes_an_attached_model_which_stays_attached():
    torch.manual_seed(0)
    model = sbattn.attach(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()), "sb")
    scripted = torch.jit.script(model.eval())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(scripted(x), model(x))
    assert sbattn.attached(model) == ["1.attention"]
    assert isinstance(sbattn.detach(model)[1], nn.BatchNorm2d)
    with pytest.raises(Exception, match="takes \\(N, 8, H, W\\)"):  # the scripted check of the block's width
        torch.jit.script(sbattn.attach(nn.Sequential(nn.Identity()), "sb", nn.Identity, channels=8))(torch.randn(2, 4, 3, 3))
