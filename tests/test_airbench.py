"""airbench94's network (`--arch airbench`): its size and arithmetic counted independently, the whitening against
a patch covariance computed here, the identity initialisation, BatchNorm's settings, and where attention goes."""
import pytest
import torch
from torch import nn

import sbattn
from sbattn.models import summarize
from sbattn.models.airbench import LOGIT_SCALE, patch_covariance

GROUPS = ((24, 64, 31), (64, 256, 15), (256, 256, 7))  # (in, out, side before the group's pool)


def test_the_network_has_airbench94s_parameters_and_flops(capsys):
    from sbattn.cli import main
    assert main(["summary", "--arch", "airbench", "--attention", "none"]) == 0
    assert "parameters: 1,972,792" in capsys.readouterr().out
    model = sbattn.create_model("airbench")
    convs = sum(cin * cout * 9 + cout * cout * 9 for cin, cout, _ in GROUPS)
    norms = sum(2 * 2 * cout for _, cout, _ in GROUPS)  # two BatchNorms a group, weight and bias
    expected = (24 * 3 * 2 * 2 + 24) + convs + norms + 256 * 10
    assert sum(p.numel() for p in model.parameters()) == expected == 1_972_792
    macs = 24 * 12 * 31 * 31 + sum(cout * cin * 9 * side ** 2 + cout * cout * 9 * (side // 2) ** 2
                                   for cin, cout, side in GROUPS) + 256 * 10
    assert summarize(model).flops_forward == 2 * macs  # 0.237 GFLOP an image


def test_the_whitening_decorrelates_the_patches_it_was_set_from():
    torch.manual_seed(0)
    images = torch.randn(6, 3, 8, 8) * torch.tensor([1.0, 2.0, 0.5])[:, None, None] + 0.3
    mixed = images.clone()
    mixed[:, 1] += 0.8 * images[:, 0]  # correlated channels, as in photographs
    # the network sees sbattn's [-1, 1] images as airbench normalises them: by CIFAR-10's mean and std
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    standardized = ((mixed + 1) / 2 - mean[:, None, None]) / std[:, None, None]
    patches = [standardized[n, :, i:i + 2, j:j + 2].reshape(-1).double() for n in range(6) for i in range(7)
               for j in range(7)]
    covariance = sum(torch.outer(p, p) for p in patches) / len(patches)  # uncentred, as airbench's
    torch.testing.assert_close(patch_covariance(standardized, 2).double(), covariance, rtol=1e-5, atol=1e-5)

    model = sbattn.create_model("airbench")
    model.init_whitening(mixed)
    w = model.whiten.weight.reshape(24, 12).double()
    torch.testing.assert_close(w[12:], -w[:12])  # each filter and its negative
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0)
    whitened = w[:12] @ covariance @ w[:12].T  # the covariance of the first twelve outputs
    torch.testing.assert_close(whitened, torch.diag(eigenvalues / (eigenvalues + 5e-4)), rtol=1e-4, atol=1e-5)
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    assert torch.equal(model.whiten.bias, torch.zeros(24))  # airbench's bias starts at zero


def test_convolutions_start_as_the_identity_and_batchnorm_is_airbenchs():
    model = sbattn.create_model("airbench", width=0.25)
    first = model.features[1]
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(first[4](x), x)  # the group's second conv: 16 -> 16 channels, the identity
    w = first[0].weight  # 24 -> 16: the identity on its first 16 input channels (all its outputs)
    assert torch.equal(w[:, :16], nn.init.dirac_(torch.empty(16, 16, 3, 3)))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6 and all(n.eps == 1e-12 and n.momentum == 0.4 and not n.weight.requires_grad
                                   and n.bias.requires_grad and torch.equal(n.weight, torch.ones_like(n.weight))
                                   for n in norms)


@pytest.mark.parametrize("placement, per_group", [("stage", 1), ("layer", 2)])
def test_attention_after_each_group_or_each_conv_and_the_logits_scaled(placement, per_group):
    model = sbattn.create_model("airbench", attention="sb", placement=placement, width=0.125).eval()
    for group in model.features[1:4]:
        kinds = [type(m).__name__ for m in group]
        assert kinds.count("ShiftBalance") == per_group and kinds[-1] == "ShiftBalance"  # after the last GELU
        if placement == "layer":
            assert kinds[kinds.index("ShiftBalance") - 1] == "GELU" and kinds.index("ShiftBalance") == 4
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), model.head(model.forward_features(x)) * LOGIT_SCALE)
    assert LOGIT_SCALE == pytest.approx(1 / 9) and model.head.bias is None
    with pytest.raises(ValueError, match="airbench supports placement stage or layer, not 'block'"):
        sbattn.create_model("airbench", placement="block")


def test_a_run_sets_the_whitening_from_its_training_images_and_keeps_it(tmp_path):
    from sbattn.config import TrainConfig
    from sbattn.data import load_fake, normalize, to_device_uint8
    from sbattn.train import train
    from sbattn.train.loop import whitening_sample
    result = train(TrainConfig(arch="airbench", attention="sb", width=0.125, dataset="fake", device="cpu",
                               precision="fp32", epochs=1, milestones=[1], seed=0, output_dir=str(tmp_path)),
                   quiet=True)
    trained = sbattn.load(result.paths.with_suffix(".pth"))
    expected = sbattn.create_model("airbench", width=0.125)
    images = to_device_uint8(load_fake().train_images, "cpu")
    expected.init_whitening(normalize(images[whitening_sample(len(images), 0)]))
    assert torch.equal(trained.whiten.weight, expected.whiten.weight)  # set from the data, frozen since
    assert not torch.equal(trained.whiten.bias, expected.whiten.bias)  # the bias trains
