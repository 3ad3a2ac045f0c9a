import pytest
import torch
from torch import nn

import sbattn
from sbattn import ShiftBalance, SqueezeExcite
from sbattn.models.summary import summarize


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("attention, params", [(None, 7_774_538), ("se", 8_127_018), ("sb", 8_127_978)])
def test_parameter_counts_match_the_seed(attention, params):
    assert count(sbattn.vgg16(attention=attention)) == params


def test_architecture_layout():
    model = sbattn.vgg16(attention="sb")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in convs)
    for stage in model.features:
        kinds = [type(m) for m in stage]
        # attention at the end of the stage, right before the pool
        assert kinds[-2] is ShiftBalance and kinds[-1] is nn.MaxPool2d
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 256), (256, 10)]


def test_seed_initialisation():
    torch.manual_seed(0)
    model = sbattn.vgg16(attention="sb")
    lin_bn1d = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    weights = torch.cat([m.weight.flatten() for m in lin_bn1d])
    assert abs(weights.std().item() - 0.02) < 0.002 and abs(weights.mean().item()) < 0.002
    assert all(torch.all(m.bias == 0) for m in lin_bn1d)
    bn2d = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bn2d)


def test_layer_placement_has_ten_blocks():
    model = sbattn.vgg16(attention="se", placement="layer")
    assert sum(isinstance(m, SqueezeExcite) for m in model.modules()) == 10
    # SE branches for every conv layer: 2 C h + h + C + 2 h + 2 C parameters each, h = C / 2
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
    extra = sum(c * c + c // 2 + c + c + 2 * c for c in widths)
    assert count(model) == 7_774_538 + extra
    assert count(sbattn.vgg16(attention="sb", placement="layer")) == count(model) + sum(widths)


@pytest.mark.parametrize("attention", [None, "se", "sb"])
def test_forward_shapes_batch_one_and_width(attention):
    model = sbattn.vgg16(attention=attention, width=0.25, num_classes=7).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0] == 16 and convs[-1] == 128 and model.classifier[0].out_features == 64


def test_create_model_by_name():
    assert count(sbattn.create_model("vgg16", attention="se")) == 8_127_018
    with pytest.raises(ValueError, match="unknown model"):
        sbattn.create_model("vgg19")


def test_summary_counts_are_computed():
    base = summarize(sbattn.vgg16())
    sb = summarize(sbattn.vgg16(attention="sb"))
    assert base.params == 7_774_538 and sb.params == 8_127_978
    assert sb.attention_blocks == 4 and sb.attention_params == 8_127_978 - 7_774_538
    # convolutions dominate: 2 * sum(Cin * Cout * 9 * H * W) per image
    conv_macs = sum(cin * cout * 9 * hw * hw for cin, cout, hw in [
        (3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8), (256, 256, 8), (256, 256, 8),
        (256, 512, 4), (512, 512, 4), (512, 512, 4)])
    linear_macs = 512 * 256 + 256 * 10
    assert base.flops_forward == 2 * (conv_macs + linear_macs)
    # backward costs twice the forward, except the first conv's gradient for the input, which nobody needs
    first_conv = 2 * 3 * 64 * 9 * 32 * 32
    assert base.flops_train == 3 * base.flops_forward - first_conv
    assert 0 < sb.attention_flops_forward < 0.01 * sb.flops_forward


def _reference_vgg16_tensors(attention: str | None) -> list[torch.Tensor]:
    """The state of the reference implementation's VGG16 after torch.manual_seed(0), restated by hand: its layers
    built in its order (an SB block draws its lambda, then builds its branch), then its weights_init applied."""
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    channels_in = 3
    for channels, repeat in ((64, 2), (128, 2), (256, 3), (512, 3)):
        for i in range(repeat):
            blocks += [nn.Conv2d(channels_in, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
            channels_in = channels
        if attention == "sb":
            lam = nn.Parameter(torch.randn(1, channels))  # before the branch's layers
            blocks.append(nn.ParameterList([lam]))
        if attention is not None:
            hidden = channels // 2
            blocks.append(nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                        nn.Linear(hidden, channels), nn.BatchNorm1d(channels)))
    blocks += [nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)]
    model = nn.Sequential(*blocks)
    for m in model.modules():  # the reference's weights_init, in model.apply's order (children before parents)
        if isinstance(m, (nn.Linear, nn.BatchNorm1d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.constant_(m.bias, 0.0)
    return list(model.state_dict().values())


@pytest.mark.parametrize("attention", [None, "se", "sb"])
def test_the_reference_vgg16_starts_bit_identical_from_the_same_seed(attention):
    expected = _reference_vgg16_tensors(attention)
    torch.manual_seed(0)
    got = list(sbattn.vgg16(attention=attention).state_dict().values())
    assert len(got) == len(expected)
    for tensor in expected:  # each the same bits somewhere: names and nesting differ, values may not
        match = next((i for i, t in enumerate(got) if t.numel() == tensor.numel() and torch.equal(t.flatten(),
                                                                                                 tensor.flatten())),
                     None)
        assert match is not None, f"no tensor of sbattn's equals the reference's {tuple(tensor.shape)}"
        got.pop(match)


@pytest.mark.parametrize("name, width", [("vgg16", 0.0625), ("resnet20", 0.25), ("airbench", 0.0625)])
def test_the_models_speak_timms_classifier_interface(name, width):
    """forward_features then forward_head is forward, bit for bit; pre_logits stops before the last layer, of
    num_features; reset_classifier puts a fresh last layer of another width (0: none, the features come out)."""
    torch.manual_seed(0)
    model = sbattn.create_model(name, attention="sb", width=width).eval()
    x, hidden = torch.randn(2, 3, 32, 32), 16  # the last layer's input at these widths
    with torch.no_grad():
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features) and \
            model.num_features == hidden
        assert model.get_classifier() is [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        assert model.num_classes == 10
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.num_classes == 5 and model.get_classifier().out_features == 5
        model.reset_classifier(0)
        assert model(x).shape == (2, hidden) and model.num_classes == 0


@pytest.mark.parametrize("name, width, stages", [("vgg16", 0.0625, 4), ("resnet20", 0.25, 4),
                                                  ("airbench", 0.0625, 3)])
def test_intermediates_and_gradient_checkpointing_as_in_timm(name, width, stages):
    """forward_intermediates: each stage's NCHW output (all, the last n, or those named), and the features that
    forward_head takes, bit for bit forward_features'; set_grad_checkpointing recomputes the stages in the backward
    pass and gives the gradients the model gives without it."""
    torch.manual_seed(0)
    model = sbattn.create_model(name, attention="sb", width=width)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = model.eval().forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x)) and len(maps) == stages
        assert all(m.dim() == 4 and m.shape[0] == 2 for m in maps)
        assert [m.shape for m in model.forward_intermediates(x, indices=2, intermediates_only=True)] == \
            [m.shape for m in maps[-2:]]
        first = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        assert torch.equal(first[0], maps[0]) and torch.equal(first[1], maps[-1])
        early, only = model.forward_intermediates(x, indices=[0], stop_early=True)
        assert torch.equal(only[0], maps[0]) and torch.equal(early, model._features_out(maps[0]))  # pooled there
    with pytest.raises(ValueError, match=f"this network has {stages} stages"):
        model.forward_intermediates(x, indices=stages + 1)
    grads, runs = {}, []
    for stage in model._feature_stages():
        stage.register_forward_pre_hook(lambda *_: runs.append(1))  # a recomputation stops early: no end hook
    for checkpointed in (False, True):
        torch.manual_seed(1)
        model.train().set_grad_checkpointing(checkpointed)
        model.zero_grad()
        runs.clear()
        model(x).sum().backward()
        grads[checkpointed] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        assert len(runs) == stages * (2 if checkpointed else 1)  # recomputed in the backward pass
    assert model.grad_checkpointing and len(grads[True]) == len(grads[False]) > 0
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads[True], grads[False]))


def test_a_depthwise_convolutions_backward_is_counted_as_what_it_computes():
    """Each gradient a convolution's backward computes (the input's, the weights') costs one convolution of the
    forward's size, groups included: torch's own formula counted a depthwise one's as a dense one's (x8 here)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    s = summarize(model, (3, 8, 8))
    dense, depthwise = (row.flops for row in s.rows)
    assert depthwise == 2 * 8 * 9 * 64 and dense == 2 * 3 * 8 * 9 * 64  # per image
    # the first layer's input needs no gradient: its weights' alone
    assert s.flops_train == s.flops_forward + dense + 2 * depthwise


def test_summary_counts_at_the_image_size_asked_and_refuses_one_too_small(capsys):
    from sbattn.cli import main
    assert main(["summary", "--arch=resnet20", "--attention=none", "--width=0.25", "--img-size=64"]) == 0
    assert "GFLOP per 64x64 image" in capsys.readouterr().out
    assert main(["summary", "--arch=vgg16", "--attention=none", "--width=0.0625", "--img-size=8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sbattn summary: error: --img-size 8: vgg16 cannot take 8x8 images (") and \
        len(err.strip().splitlines()) == 1
