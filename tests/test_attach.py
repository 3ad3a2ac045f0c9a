"""attach / attached / detach on a plain Sequential, the project's models, and a torchvision-style ResNet."""
import pytest
import torch
from torch import nn

import sbattn
from sbattn import ShiftBalance, SqueezeExcite, WithAttention, attach, attached, detach


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def block_params(kind: str, channels: int, **options) -> int:
    return count(sbattn.create_attention(kind, channels, **options))


# A ResNet written the way torchvision writes it, as a user's own network would be.
class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class TorchvisionStyleResNet(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), widths=(8, 16, 32, 64), num_classes=10):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())


def test_sequential_blocks_sit_in_the_forward_path():
    torch.manual_seed(0)
    model = small_net()
    before = count(model)
    assert attach(model, "sb", where=nn.BatchNorm2d) is model
    assert attached(model) == ["1.attention", "4.attention"]
    assert count(model) - before == block_params("sb", 8) + block_params("sb", 16)
    assert isinstance(model[1], WithAttention) and isinstance(model[1].attention, ShiftBalance)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    expected = x
    for layer in (model[0], model[1].module, model[1].attention, model[2], model[3], model[4].module,
                  model[4].attention, model[5]):
        expected = layer(expected)
    torch.testing.assert_close(model(x), expected)


def test_detach_restores_the_original_modules():
    torch.manual_seed(0)
    model = small_net().eval()
    originals = list(model)
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    reference = model(x)
    attach(model, "se", where=nn.BatchNorm2d)
    assert not torch.allclose(model(x), reference)
    assert detach(model) is model
    assert attached(model) == [] and all(a is b for a, b in zip(model, originals))
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), reference)


def test_selection_by_names_predicate_and_type_agree():
    by_type = attached(attach(small_net(), "sb", where=nn.BatchNorm2d))
    by_names = attached(attach(small_net(), "sb", where=["1", "4"]))
    by_predicate = attached(attach(small_net(), "sb", where=lambda name, m: isinstance(m, nn.BatchNorm2d)))
    assert by_type == by_names == by_predicate == ["1.attention", "4.attention"]
    assert attached(attach(small_net(), "sb", where="3")) == ["3.attention"]


def test_refuses_to_attach_twice_at_the_same_place():
    model = attach(small_net(), "sb", where=nn.BatchNorm2d)
    with pytest.raises(ValueError, match=r"'1' already has attention"):
        attach(model, "sb", where=nn.BatchNorm2d)
    with pytest.raises(ValueError, match=r"'4' already has attention"):
        attach(model, "se", where=["4"])
    attach(model, "se", where=nn.Conv2d)  # another place is fine
    assert attached(model) == ["0.attention", "1.attention", "3.attention", "4.attention"]


def test_never_selects_inside_attention_blocks():
    model = sbattn.vgg16(attention="sb", width=0.125)
    with pytest.raises(ValueError, match="selects no module"):
        attach(model, "se", where=nn.BatchNorm1d)  # only the SB branches hold BatchNorm1d
    with pytest.raises(ValueError, match="cannot infer"):
        attach(model, "se", where=lambda name, m: isinstance(m, ShiftBalance))  # selectable, but (N, C, H, W)?
    attach(model, "se", where=nn.BatchNorm2d)
    assert len(attached(model)) == 10  # one per conv-BN of the VGG16; none inside the SB blocks
    assert sum(isinstance(m, SqueezeExcite) for m in model.modules()) == 10


def test_project_vgg16_baseline_gets_the_layer_placement_parameter_count():
    torch.manual_seed(0)
    model = sbattn.vgg16(width=0.125)
    attach(model, "sb", where=nn.BatchNorm2d)
    # The VGG's own "layer" placement puts one SB after every conv-BN(-ReLU): the same blocks.
    assert count(model) == count(sbattn.vgg16(attention="sb", placement="layer", width=0.125))
    assert len(attached(model)) == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_stage_of_the_vgg_infers_its_channels_through_relu_and_pool():
    model = sbattn.vgg16(width=0.125)
    attach(model, "sb", where=[f"features.{i}" for i in range(4)])
    widths = [model.get_submodule(n).branch[0].in_features for n in attached(model)]
    assert widths == [8, 16, 32, 64]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_style_resnet_at_the_se_resnet_place():
    torch.manual_seed(0)
    model = TorchvisionStyleResNet()
    before = count(model)
    attach(model, "sb", where=lambda name, m: name.endswith(".bn2"))
    names = attached(model)
    assert names == [f"layer{i}.{j}.bn2.attention" for i in range(1, 5) for j in range(2)]
    assert count(model) - before == sum(2 * block_params("sb", w) for w in (8, 16, 32, 64))
    # The SB block is on the residual branch, before the addition: with lambda = 0 the network is unchanged.
    for name in names:
        nn.init.zeros_(model.get_submodule(name).lam)
    plain = TorchvisionStyleResNet()
    plain.load_state_dict({k.replace(".bn2.module.", ".bn2."): v for k, v in model.state_dict().items()
                           if ".attention." not in k})
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(x), plain(x))
    model.train()
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert all(model.get_submodule(n).lam.grad is not None for n in names)


def test_attach_to_the_projects_resnet_after_each_block():
    model = sbattn.resnet20(width=0.5)
    before = count(model)
    attach(model, "se", where=lambda name, m: name.endswith("branch.bn2"))
    assert count(model) - before == sum(3 * block_params("se", w) for w in (8, 16, 32))
    # The same blocks as the builder's own SE-ResNet placement.
    assert count(model) == count(sbattn.resnet20(attention="se", width=0.5))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_model_without_batchnorm_selecting_convolutions():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 12, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    before = count(model)
    attach(model, "sb", where=nn.Conv2d, ratio=0.25, activation="sigmoid")
    assert count(model) - before == block_params("sb", 6, ratio=0.25) + block_params("sb", 12, ratio=0.25)
    assert [model.get_submodule(n).activation for n in attached(model)] == ["sigmoid", "sigmoid"]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_errors_name_the_module():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"module '3' \(Linear\)"):
        attach(model, "sb", where=nn.Linear)
    with pytest.raises(ValueError, match=r"module '1' \(ReLU\)"):
        attach(model, "sb", where=["0", "1"])
    assert attached(model) == []  # nothing half-done after an error
    with pytest.raises(ValueError, match=r"no module named 'head'"):
        attach(model, "sb", where=["head"])
    with pytest.raises(ValueError, match="selects no module"):
        attach(model, "sb", where=nn.BatchNorm2d)
    with pytest.raises(ValueError, match="unknown attention 'bam'"):
        attach(model, "bam", where=nn.Conv2d)
    with pytest.raises(ValueError, match="needs an attention kind"):
        attach(model, None, where=nn.Conv2d)


def test_a_failing_block_names_its_module_and_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match=r"module '4' \(BatchNorm2d, 8 channels\): ratio 0.1"):
        attach(model, "sb", where=nn.BatchNorm2d, ratio=0.1)  # 16 channels give 1 hidden unit, 8 give none
    assert attached(model) == [] and isinstance(model[1], nn.BatchNorm2d)


def test_explicit_channels_for_a_module_it_cannot_read():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x)

    model = nn.Sequential(Custom(), nn.ReLU())
    with pytest.raises(ValueError, match=r"'0' \(Custom\).*channels="):
        attach(model, "sb", where=Custom)
    attach(model, "sb", where=Custom, channels=4)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4, 8, 8)


def test_new_blocks_follow_the_module_dtype_and_mode():
    model = small_net().double().eval()
    attach(model, "sb", where=nn.BatchNorm2d)
    blocks = [model.get_submodule(n) for n in attached(model)]
    assert all(p.dtype == torch.float64 for b in blocks for p in b.parameters())
    assert not any(b.training for b in blocks)
    assert model(torch.randn(1, 3, 8, 8, dtype=torch.float64)).shape == (1, 16, 8, 8)  # eval: a batch of 1 is fine


# The NCHW layers of timm and torchvision that are none of torch's 2-d classes, as those libraries write them
# (timm's LayerNorm2d: an nn.LayerNorm over the channels of an NCHW tensor; FrozenBatchNorm2d: buffers only).
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FrozenBatchNorm2d(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features
        self.register_buffer("weight", torch.ones(num_features))

    def forward(self, x):
        return x * self.weight[:, None, None]


class ChannelsLastBlock(nn.Module):
    """A ConvNeXt block's order: depthwise conv, then a LayerNorm on the channels-last tensor."""

    def __init__(self, channels):
        super().__init__()
        self.conv_dw = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(self.conv_dw(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def convnext_like(widths=(8, 16, 32)) -> nn.Sequential:
    layers, cin = [], 3
    for w in widths:
        layers += [nn.Conv2d(cin, w, 2, stride=2), LayerNorm2d(w), ChannelsLastBlock(w)]
        cin = w
    return nn.Sequential(*layers, FrozenBatchNorm2d(cin))


def test_widths_after_layernorm2d_and_frozen_batchnorm_per_stage():
    model = convnext_like()
    attach(model, "sb", where=lambda name, m: isinstance(m, (LayerNorm2d, FrozenBatchNorm2d)))
    widths = [model.get_submodule(n).branch[0].in_features for n in attached(model)]
    assert widths == [8, 16, 32, 32]
    attach(model, "se", where=lambda name, m: name.endswith("conv_dw"))
    dw = [n for n in attached(model) if "conv_dw" in n]
    assert [model.get_submodule(n).branch[0].in_features for n in dw] == [8, 16, 32]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 32, 4, 4)


def test_a_layernorm_says_why_it_cannot_be_read():
    with pytest.raises(ValueError, match=r"'2.norm' \(LayerNorm\).*channels-last \(N, H, W, C\)"):
        attach(convnext_like(), "sb", where=lambda name, m: name == "2.norm")


def test_a_channels_last_tensor_is_an_error_naming_the_module():
    model = convnext_like()
    attach(model, "sb", where=["2.norm"], channels=8)
    with pytest.raises(ValueError) as error:
        model(torch.randn(2, 3, 32, 32))
    message = str(error.value)
    assert "after module '2.norm' (LayerNorm) takes (N, 8, H, W) tensors, got (2, 16, 16, 8)" in message
    assert "channels-last" in message and "\n" not in message


def test_a_wrong_width_is_an_error_naming_the_module():
    model = small_net()
    attach(model, "sb", where=["4"], channels=12)
    with pytest.raises(ValueError, match=r"after module '4' \(BatchNorm2d\) takes \(N, 12, H, W\) tensors, "
                                         r"got \(2, 16, 8, 8\)$"):
        model(torch.randn(2, 3, 8, 8))
