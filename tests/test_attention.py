import pytest
import torch
from torch import nn

import sbattn
from sbattn import ShiftBalance, SqueezeExcite, create_attention
from sbattn.nn.ops import add_per_channel, spatial_mean


def reference_branch(block, z):
    """The branch computed from the formula with the block's own weights, layer by layer."""
    lin1, bn1, _, lin2, bn2 = block.branch

    def bn(layer, h):
        if isinstance(layer, nn.Identity):
            return h
        if layer.training:
            mean, var = h.mean(0), h.var(0, unbiased=False)
        else:
            mean, var = layer.running_mean, layer.running_var
        return (h - mean) / torch.sqrt(var + layer.eps) * layer.weight + layer.bias

    h = bn(bn1, z @ lin1.weight.T + lin1.bias).clamp_min(0)
    return bn(bn2, h @ lin2.weight.T + lin2.bias)


def randomize(block):
    """Non-trivial BN statistics and affine parameters, so the test can tell them apart."""
    for m in block.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return block


REFERENCE_ACTS = {
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": lambda a: a.clamp_min(0),
    "softmax": lambda a: a.exp() / a.exp().sum(1, keepdim=True), "linear": lambda a: a,
}


@pytest.mark.parametrize("activation", list(REFERENCE_ACTS))
@pytest.mark.parametrize("training", [True, False])
def test_shift_balance_matches_formula(activation, training):
    torch.manual_seed(0)
    block = randomize(ShiftBalance(12, ratio=0.5, activation=activation)).train(training)
    x = torch.randn(5, 12, 6, 7, dtype=torch.float64)
    block.double()
    z = x.sum((2, 3)) / (6 * 7)
    a = REFERENCE_ACTS[activation](reference_branch(block, z))
    expected = x + block.lam.view(1, 12, 1, 1) * a.view(5, 12, 1, 1)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("use_bn", [True, False])
def test_squeeze_excite_matches_formula(use_bn):
    torch.manual_seed(1)
    block = randomize(SqueezeExcite(16, ratio=0.25, use_bn=use_bn)).eval().double()
    x = torch.randn(3, 16, 5, 5, dtype=torch.float64)
    gate = torch.sigmoid(reference_branch(block, x.mean((2, 3))))
    torch.testing.assert_close(block(x), x * gate.view(3, 16, 1, 1))
    assert any(isinstance(m, nn.BatchNorm1d) for m in block.modules()) == use_bn


def test_hidden_width_is_int_of_ratio_times_channels():
    block = ShiftBalance(10, ratio=0.35)
    assert block.branch[0].out_features == 3 and block.branch[3].in_features == 3
    assert block.branch[0].bias is not None and block.branch[3].bias is not None
    bn = block.branch[1]
    assert (bn.eps, bn.momentum) == (nn.BatchNorm1d(3).eps, nn.BatchNorm1d(3).momentum)


def test_lambda_is_per_channel_learnable_and_gets_gradient():
    block = ShiftBalance(8)
    assert isinstance(block.lam, nn.Parameter) and block.lam.shape == (8,)
    block(torch.randn(4, 8, 3, 3)).square().sum().backward()
    assert block.lam.grad is not None and block.lam.grad.abs().sum() > 0


def test_lambda_init_options():
    torch.manual_seed(0)
    normal = ShiftBalance(4096).lam.detach()
    assert abs(normal.mean()) < 0.1 and abs(normal.std() - 1) < 0.1
    identity = ShiftBalance(8, lambda_init="zeros").eval()
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(identity(x), x)
    assert torch.all(ShiftBalance(3, lambda_init=0.5).lam == 0.5)
    with pytest.raises(ValueError, match="lambda_init"):
        ShiftBalance(3, lambda_init="uniform")


def test_softmax_sums_to_one_over_channels():
    block = ShiftBalance(6, activation="softmax").eval()
    a = block.act(block.branch(torch.randn(4, 6)))
    torch.testing.assert_close(a.sum(1), torch.ones(4))


def test_unknown_activation_lists_the_five():
    with pytest.raises(ValueError) as err:
        ShiftBalance(8, activation="gelu")
    for name in ("tanh", "sigmoid", "relu", "softmax", "linear"):
        assert name in str(err.value)


def test_empty_hidden_layer_names_channels_and_ratio():
    with pytest.raises(ValueError, match=r"0\.1.*8 channels"):
        ShiftBalance(8, ratio=0.1)


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
def test_batch_of_one_in_eval_keeps_batch_dimension(cls):
    block = cls(8).eval()
    y = block(torch.randn(1, 8, 5, 3))
    assert y.shape == (1, 8, 5, 3)


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
def test_batch_of_one_in_training_says_why(cls):
    with pytest.raises(ValueError, match="at least 2 samples"):
        cls(8).train()(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 7)])
def test_odd_spatial_sizes(cls, hw):
    x = torch.randn(3, 8, *hw)
    assert cls(8).train()(x).shape == x.shape


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
def test_channels_last_gives_same_values_and_layout(cls):
    block = cls(16).eval()
    x = torch.randn(2, 16, 6, 6)
    xl = x.to(memory_format=torch.channels_last)
    y = block(xl)
    torch.testing.assert_close(y, block(x))
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_trunk_dtype_and_values(cls, dtype):
    torch.manual_seed(0)
    block, conv = cls(16).eval(), nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(4, 16, 8, 8)
    with torch.autocast("cpu", dtype=dtype):
        y = block(conv(x))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), block(conv(x)), atol=0.1, rtol=0.05)


def test_create_attention_registry():
    assert create_attention(None, 8) is None and create_attention("none", 8) is None
    assert isinstance(create_attention("sb", 8, activation="relu"), ShiftBalance)
    # SE's gate is fixed: an SB activation handed to every kind is dropped, not an error.
    assert isinstance(create_attention("se", 8, activation="tanh"), SqueezeExcite)
    with pytest.raises(ValueError, match="unknown attention"):
        create_attention("bam", 8)


def test_register_attention_makes_a_new_kind_available_to_models(gate_attention):
    model = sbattn.vgg16(attention="gate", width=0.125)
    assert sum(isinstance(m, gate_attention) for m in model.modules()) == 4
    assert "gate" in sbattn.list_attention()


@pytest.mark.parametrize("shape", [(4, 16, 8, 8), (1, 3, 5, 7), (2, 1, 4, 4), (3, 8, 1, 2)])
def test_cpu_bf16_channels_last_mean_and_shift_equal_the_plain_ops(shape):
    # On CPU bf16 channels-last tensors both are computed as matrix products; values and gradients must be those
    # of the plain formulas (computed here in float64 from the same bf16 values).
    torch.manual_seed(0)
    x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
    shift = torch.randn(shape[:2], requires_grad=True)
    y = add_per_channel(x, shift)
    z = spatial_mean(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    x64, shift64 = x.detach().double().requires_grad_(), shift.detach().double().requires_grad_()
    y64, z64 = x64 + shift64.to(torch.bfloat16).double()[:, :, None, None], x64.mean((2, 3))
    torch.testing.assert_close(y.double(), y64, rtol=8e-3, atol=8e-3)
    torch.testing.assert_close(z.double(), z64, rtol=8e-3, atol=8e-3)
    gy, gz = torch.randn(shape), torch.randn(shape[:2])
    torch.autograd.backward([y, z], [gy.to(torch.bfloat16), gz.to(z.dtype)])
    torch.autograd.backward([y64, z64], [gy.to(torch.bfloat16).double(), gz.to(z.dtype).double()])
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(shift.grad.double(), shift64.grad, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_a_block_converted_to_another_dtype_runs_in_it(cls, dtype):
    block = cls(8).to(dtype).train()
    y = block(torch.randn(4, 8, 5, 5, dtype=dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()


def test_the_mean_and_the_shift_give_channels_last_gradients():
    # A gradient in the other layout makes the sum of the trunk's gradients, and every backward kernel below the
    # block, run on mixed layouts (it cost the CPU 8% of a bf16 step once).
    x = torch.randn(4, 16, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
    for y in (spatial_mean(x), add_per_channel(x, torch.randn(4, 16))):
        grad, = torch.autograd.grad(y, x, torch.randn_like(y))
        assert grad.is_contiguous(memory_format=torch.channels_last)


def test_a_builder_that_cannot_take_what_models_pass_is_refused_when_it_registers(attention_registry):
    from torch import nn

    class NoRatio(nn.Module):
        def __init__(self, channels):
            super().__init__()

    class Options(nn.Module):  # any option: accepted
        def __init__(self, channels, **options):
            super().__init__()

    for builder, said in [(NoRatio, "takes no `ratio`"), (lambda: nn.Identity(), "channel count as its first"),
                          ("sb", "not a block class or a builder")]:
        with pytest.raises(ValueError, match=said) as error:
            sbattn.register_attention("bad")(builder)
        assert "\n" not in str(error.value) and "bad" not in sbattn.list_attention()
    sbattn.register_attention("options")(Options)
    assert isinstance(sbattn.create_attention("options", 8, ratio=0.25), Options)

    def no_placement(attention=None, num_classes=10):
        return nn.Identity()
    with pytest.raises(ValueError, match="no_placement must take `placement` with a default"):
        sbattn.register_model(no_placement)
    assert "no_placement" not in sbattn.list_models()


@pytest.mark.parametrize("kind", ["sb", "se"])
@pytest.mark.parametrize("shape", [(2, 16), (2, 16, 8), (2, 8, 8, 16), (2, 8, 8, 8)])
def test_an_input_not_nchw_of_the_blocks_channels_is_one_clear_value_error(kind, shape):
    """2-D, 3-D, NHWC and wrong-channel inputs name the layout expected, eagerly and under TorchScript, instead of
    an index or matmul error from inside the branch."""
    block = sbattn.create_attention(kind, 16)
    for run in (block, torch.jit.script(block)):
        with pytest.raises((ValueError, torch.jit.Error), match=r"expects \(N, C, H, W\) input with C = 16 channels; "
                                                                  rf"got shape \[{', '.join(map(str, shape))}\]"):
            run(torch.randn(*shape))
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)
