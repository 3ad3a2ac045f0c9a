"""The CIFAR ResNets: published parameter counts, layout, attention placements, and the builders' contract."""
import pytest
import torch
from torch import nn

import sbattn
from sbattn import ShiftBalance, SqueezeExcite, TrainConfig
from sbattn.train.evaluation import fold_batchnorm
from sbattn.models.resnet import CIFAR_RESNET18, CIFAR_RESNET20, CIFAR_RESNET56, BasicBlock, PadShortcut

BUILDERS = {"resnet20": (sbattn.resnet20, CIFAR_RESNET20, "A"), "resnet56": (sbattn.resnet56, CIFAR_RESNET56, "A"),
            "resnet18": (sbattn.resnet18, CIFAR_RESNET18, "B")}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int) -> int:
    return k * k * cin * cout  # no bias: BN follows


def bn(c: int) -> int:
    return 2 * c


def attention_params(kind: str | None, c: int, ratio: float = 0.5) -> int:
    if kind is None:
        return 0
    h = int(ratio * c)
    branch = (c * h + h) + bn(h) + (h * c + c) + bn(c)  # Linear, BN1d, Linear, BN1d
    return branch + (c if kind == "sb" else 0)  # SB's per-channel lambda


def expected_params(stages, shortcut: str, kind: str | None = None, placement: str = "block",
                    num_classes: int = 10) -> int:
    """He et al.'s architecture counted by hand: stem, basic blocks, shortcuts, attention, classifier."""
    channels = stages[0][0]
    total = conv(3, channels, 3) + bn(channels)
    for width, blocks, stride in stages:
        for i in range(blocks):
            total += conv(channels, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if shortcut == "B" and (channels != width or (stride if i == 0 else 1) != 1):
                total += conv(channels, width, 1) + bn(width)
            attn_here = {"block": 1, "layer": 2, "stage": int(i == blocks - 1)}[placement]
            total += attn_here * attention_params(kind, width)
            channels = width
    return total + channels * num_classes + num_classes


@pytest.mark.parametrize("name, published, digits", [("resnet20", 0.27, 2), ("resnet56", 0.85, 2),
                                                     ("resnet18", 11.2, 1)])
def test_published_parameter_counts(name, published, digits):
    builder, stages, shortcut = BUILDERS[name]
    n = count(builder())
    assert round(n / 1e6, digits) == published
    assert n == expected_params(stages, shortcut)


def test_cifar_resnet18_is_the_usual_one():
    assert count(sbattn.resnet18()) == 11_173_962  # the widely quoted count of the CIFAR-10 ResNet-18


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("kind", ["se", "sb"])
@pytest.mark.parametrize("placement", ["block", "stage", "layer"])
def test_parameter_counts_with_attention(name, kind, placement):
    builder, stages, shortcut = BUILDERS[name]
    model = builder(attention=kind, placement=placement)
    assert count(model) == expected_params(stages, shortcut, kind, placement)


@pytest.mark.parametrize("placement, per_block", [("block", 1), ("layer", 2), ("stage", None)])
def test_each_placement_puts_the_expected_number_of_blocks(placement, per_block):
    model = sbattn.resnet56(attention="sb", placement=placement, width=0.25)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27
    attn = [m for m in model.modules() if isinstance(m, ShiftBalance)]
    assert len(attn) == (3 if per_block is None else per_block * 27)
    for stage in model.stages:
        with_attn = [isinstance(b.branch[-1], ShiftBalance) for b in stage]
        assert with_attn == ([False] * 8 + [True] if per_block is None else [True] * 9)


def test_attention_order_in_the_branch():
    block = sbattn.resnet20(attention="se", placement="layer").stages[0][0]
    assert list(block.branch._modules) == ["conv1", "bn1", "attn1", "relu", "conv2", "bn2", "attn"]
    assert isinstance(block.branch.attn1, SqueezeExcite) and isinstance(block.branch.attn, SqueezeExcite)
    block = sbattn.resnet20(attention="se").stages[0][0]
    assert list(block.branch._modules) == ["conv1", "bn1", "relu", "conv2", "bn2", "attn"]


class _Zero(nn.Module):
    def __init__(self, channels, **options):
        super().__init__()

    def forward(self, x):
        return x * 0


def test_attention_acts_on_the_residual_branch_before_the_addition(attention_registry):
    # An "attention" that zeroes its input leaves only the shortcut: relu(shortcut(x)).
    sbattn.register_attention("zero")(_Zero)
    x = torch.randn(2, 4, 8, 8)
    block = BasicBlock(4, 8, stride=2, shortcut="A", attention="zero", attn_after_bn2=True).eval()
    expected = torch.relu(torch.cat([torch.zeros(2, 2, 4, 4), x[:, :, ::2, ::2], torch.zeros(2, 2, 4, 4)], 1))
    torch.testing.assert_close(block(x), expected)
    block = BasicBlock(4, 4, stride=1, attention="zero", attn_after_bn2=True).eval()
    torch.testing.assert_close(block(x), torch.relu(x))


def test_option_a_shortcut_has_no_parameters_and_pads_channels():
    shortcut = PadShortcut(16, 32, 2)
    x = torch.randn(3, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (3, 32, 4, 4) and count(shortcut) == 0
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("name, width", [("resnet20", 0.5), ("resnet56", 0.25), ("resnet18", 0.125)])
@pytest.mark.parametrize("kind", [None, "se", "sb"])
def test_forward_shapes_and_batch_of_one_in_eval(name, width, kind):
    model = sbattn.create_model(name, attention=kind, width=width, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    model.eval()
    with torch.no_grad():
        one = model(x[:1])
        torch.testing.assert_close(one, model(x)[:1], rtol=1e-4, atol=1e-5)
    assert one.shape == (1, 7)


def test_width_multiplier_scales_every_width():
    model = sbattn.resnet20(width=0.5)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [8] + [8] * 6 + [16] * 6 + [32] * 6
    assert model.classifier.in_features == 32
    shortcuts = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert shortcuts == []  # option A stays parameter-free under any width
    r18 = sbattn.resnet18(width=0.25)
    projections = [m.out_channels for m in r18.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert projections == [32, 64, 128]


def test_he_initialisation():
    torch.manual_seed(0)
    model = sbattn.resnet18(attention="sb")
    conv = model.stages[3][1].branch.conv2  # 512 -> 512, 3x3: fan_out 4608
    assert abs(conv.weight.std().item() - (2 / (9 * 512)) ** 0.5) < 0.001
    bn2d = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bn2d)
    # The attention blocks keep PyTorch's defaults (SE-ResNet's convention), not the VGG's N(0, 0.02).
    bn1d = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert all(torch.all(m.weight == 1) for m in bn1d)


@pytest.mark.parametrize("placement", ["block", "stage", "layer"])
def test_builds_from_a_training_config_and_on_the_meta_device(placement):
    config = TrainConfig(arch="resnet20", placement=placement, device="cpu", lambda_init="zeros")
    with torch.device("meta"):
        model = sbattn.create_model(config.arch, num_classes=100, **config.model_options())
    assert next(model.parameters()).is_meta and model.classifier.out_features == 100
    lam = [m.lam for m in sbattn.create_model(config.arch, **config.model_options()).modules()
           if isinstance(m, ShiftBalance)]
    assert lam and all(torch.all(v == 0) for v in lam)


def test_bad_options_are_one_line_value_errors():
    with pytest.raises(ValueError, match="placement.*'everywhere'") as e:
        sbattn.resnet20(placement="everywhere")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown attention"):
        sbattn.resnet20(attention="bam")
    with pytest.raises(sbattn.ConfigError, match="ratio"):
        TrainConfig(arch="resnet20", width=0.0625, device="cpu")  # 1 channel leaves no hidden unit


def test_evaluation_folding_keeps_the_function():
    torch.manual_seed(0)
    model = sbattn.resnet20(attention="sb", placement="layer", width=0.5)
    model(torch.randn(8, 3, 32, 32))  # move the BN statistics off their defaults
    model.eval()
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0  # every conv-BN pair folds
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_trains_a_step():
    torch.manual_seed(0)
    model = sbattn.resnet20(attention="sb", width=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < losses[0]
