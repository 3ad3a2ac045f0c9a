"""The blocks and every registered model under torch.fx, torch.export and ONNX, in eval and train mode; the
traced forms keep the CPU bf16 channels-last GEMMs and the batch-of-one error; and the reference's SB and SE
give, to the bit, what the forward before these changes gave."""
import contextlib
import copy
import logging
import warnings

import onnxruntime as ort
import pytest
import torch
import torch.fx
from torch import nn

import sbattn
import sbattn.nn.ops as ops
from sbattn import ShiftBalance, SqueezeExcite
from sbattn.models import create_model, list_models

MODES = ["eval", "train"]


@contextlib.contextmanager
def quiet_exporters():
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def tiny(name: str, attention: str, mode: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, attention=attention, width=0.125).train(mode == "train")


def batch(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# The forward of ShiftBalance and SqueezeExcite before they were made traceable, written out as it was.
def old_pixel_rows(x):
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


def old_fast(x):
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


def old_spatial_mean(x):
    if not old_fast(x):
        return x.mean((2, 3))
    n, c, h, w = x.shape
    return (x.new_ones(1, h * w) @ old_pixel_rows(x)).view(n, c) / (h * w)


def old_add_per_channel(x, shift):
    shift = shift.to(x.dtype)
    if not old_fast(x):
        return x + shift[:, :, None, None]
    n, c, h, w = x.shape
    y = torch.baddbmm(old_pixel_rows(x), x.new_ones(n, h * w, 1), shift[:, None, :])
    return y.view(n, h, w, c).permute(0, 3, 1, 2)


def old_branch(branch, z):
    if branch.use_bn and branch.training and z.shape[0] == 1:
        raise ValueError("batch of 1")
    z = z.to(branch[0].weight.dtype)
    autocast = torch.is_autocast_enabled(z.device.type)
    with torch.autocast(z.device.type, enabled=False) if autocast else contextlib.nullcontext():
        for layer in branch:
            z = layer(z)
        return z


def old_forward(block, x):
    if isinstance(block, ShiftBalance):
        return old_add_per_channel(x, block.lam * block.act(old_branch(block.branch, old_spatial_mean(x))))
    gate = torch.sigmoid(old_branch(block.branch, old_spatial_mean(x)))
    return x * gate.to(x.dtype)[:, :, None, None]


def old_weights(channels: int, sb: bool, ratio: float = 0.5) -> dict[str, torch.Tensor]:
    """The parameters and buffers the blocks' constructors drew before, in the same order from the same seed (SB's
    lambda first, as the reference implementation draws it)."""
    hidden = int(ratio * channels)
    lam = torch.randn(channels) if sb else None
    layers = {"0": nn.Linear(channels, hidden), "1": nn.BatchNorm1d(hidden), "3": nn.Linear(hidden, channels),
              "4": nn.BatchNorm1d(channels)}
    weights = {f"branch.{i}.{k}": v for i, layer in layers.items() for k, v in layer.state_dict().items()}
    return {**weights, "lam": lam} if sb else weights


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
def test_the_same_seed_draws_the_same_weights_as_before(cls):
    torch.manual_seed(0)
    got = cls(16).state_dict()
    torch.manual_seed(0)
    expected = old_weights(16, sb=cls is ShiftBalance)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["fp32", "fp32-channels-last", "bf16-channels-last-autocast", "bf16-weights"])
def test_outputs_are_bit_identical_to_the_old_forward(cls, mode, form):
    torch.manual_seed(0)
    block = cls(16).train(mode == "train")
    x = torch.randn(4, 16, 6, 6)
    if form != "fp32":
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = contextlib.nullcontext()
    if form.startswith("bf16"):
        x = x.to(torch.bfloat16)
        if form == "bf16-weights":
            block = block.to(torch.bfloat16)
        else:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    old_block = copy.deepcopy(block)  # training updates the BatchNorm statistics: each forward its own copy
    with autocast:
        y, expected = block(x), old_forward(old_block, x)
    assert y.dtype == expected.dtype and torch.equal(y, expected)
    assert y.is_contiguous(memory_format=torch.channels_last) == (form != "fp32")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("attention", ["sb", "se"])
@pytest.mark.parametrize("mode", MODES)
def test_every_model_traces_with_torch_fx(name, attention, mode):
    model = tiny(name, attention, mode)
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    x = batch()
    assert torch.equal(traced(x), model(x))
    targets = {getattr(n.target, "__name__", None) for n in traced.graph.nodes if n.op == "call_function"}
    assert {"spatial_mean", "_batch_of_two_in_training"} <= targets  # leaves: decided as the graph runs


def test_fx_post_training_quantisation_of_an_sb_model():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    model = tiny("vgg16", "sb", "eval")
    x = batch(4)
    with quiet_exporters():
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
        prepared(x)  # calibration
        quantised = convert_fx(prepared)
    branch_layers = [type(m).__module__ for name, m in quantised.named_modules() if ".branch." in name]
    assert any("quantized" in module for module in branch_layers)  # the branch's Linear layers too
    expected = model(x)
    torch.testing.assert_close(quantised(x), expected, rtol=0.1, atol=0.1 * expected.abs().max().item())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("mode", MODES)
def test_every_model_exports_with_torch_export(name, mode):
    model = tiny(name, "sb", mode)
    x = batch()
    reference = copy.deepcopy(model)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    module = program.module()
    torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-5)
    other = batch(5)
    torch.testing.assert_close(module(other), reference(other), rtol=1e-5, atol=1e-5)


# Every model with SB, and one with SE (the blocks themselves are exported both ways below).
@pytest.mark.parametrize("name, attention", [(name, "sb") for name in list_models()] + [("vgg16", "se")])
@pytest.mark.parametrize("mode", MODES)
def test_every_model_exports_to_onnx(name, attention, mode, tmp_path):
    # The TorchScript exporter keeps a training graph's batch statistics (TrainingMode.TRAINING), so the file is
    # checked against the model in both modes; the torch.export-based exporter is checked on the blocks below.
    model = tiny(name, attention, mode)
    path = tmp_path / "model.onnx"
    training = torch.onnx.TrainingMode.TRAINING if mode == "train" else torch.onnx.TrainingMode.EVAL
    with quiet_exporters():
        torch.onnx.export(copy.deepcopy(model), (batch(),), str(path), dynamo=False, training=training,
                          input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (3, 5):
        x = batch(n)
        with torch.no_grad():
            expected = copy.deepcopy(model)(x)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        tolerance = 1e-3 if mode == "train" else 1e-4  # batch statistics through 56 layers: float noise grows
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
@pytest.mark.parametrize("mode", MODES)
def test_the_blocks_export_to_onnx_with_the_torch_export_exporter(cls, mode, tmp_path):
    torch.manual_seed(0)
    block = cls(8).train(mode == "train")
    path = tmp_path / "block.onnx"
    x = torch.randn(3, 8, 5, 5)
    with quiet_exporters():
        torch.onnx.export(copy.deepcopy(block), (x,), str(path), dynamo=True, input_names=["x"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    if mode == "eval":
        with torch.no_grad():
            torch.testing.assert_close(got, block(x), rtol=1e-5, atol=1e-5)
    assert got.shape == x.shape


def count_gemm_forms(monkeypatch) -> list[int]:
    calls = [0]
    real = ops._pixel_rows

    def counted(x):
        calls[0] += 1
        return real(x)
    monkeypatch.setattr(ops, "_pixel_rows", counted)
    return calls


def bf16_channels_last(*shape) -> torch.Tensor:
    return torch.randn(*shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
def test_a_traced_block_keeps_the_cpu_bf16_channels_last_fast_path(cls, monkeypatch):
    torch.manual_seed(0)
    block = cls(16).eval().to(torch.bfloat16)
    traced = torch.fx.symbolic_trace(block)
    calls = count_gemm_forms(monkeypatch)
    x = bf16_channels_last(4, 16, 6, 6)
    y = traced(x)
    assert calls[0] == (2 if cls is ShiftBalance else 1)  # the mean, and SB's shift, as GEMMs
    assert torch.equal(y, block(x)) and y.is_contiguous(memory_format=torch.channels_last)
    calls[0] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an fp32 block in a bf16 trunk, as training runs it
        traced = torch.fx.symbolic_trace(block.float())
        y = traced(x)
    assert calls[0] == (2 if cls is ShiftBalance else 1) and y.dtype == torch.bfloat16
    # A graph has no autocast regions: there the branch follows the autocast around it, so values agree to bf16.
    torch.testing.assert_close(y.float(), block(x).float(), rtol=0.02, atol=0.02)
    calls[0] = 0
    traced(torch.randn(4, 16, 6, 6))
    assert calls[0] == 0  # and the plain forms for a plain fp32 tensor, from the same graph


def test_an_exported_bf16_channels_last_block_holds_the_gemm_forms():
    torch.manual_seed(0)
    block = ShiftBalance(16).eval().to(torch.bfloat16)
    x = bf16_channels_last(4, 16, 6, 6)
    program = torch.export.export(block, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    ops_used = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("baddbmm" in op for op in ops_used), ops_used
    assert torch.equal(program.module()(x), block(x))


@pytest.mark.parametrize("cls", [ShiftBalance, SqueezeExcite])
def test_a_traced_block_says_why_for_a_batch_of_one_in_training_only(cls):
    traced = torch.fx.symbolic_trace(cls(8).train())
    with pytest.raises(ValueError, match="at least 2 samples"):
        traced(torch.randn(1, 8, 4, 4))
    traced.eval()  # the check reads the mode the graph runs in, not the one it was traced in
    assert traced(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)


class ToChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def test_an_attached_model_traces_and_its_traced_form_checks_the_layout():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), ToChannelsLast(), nn.LayerNorm(8))
    sbattn.attach(model, "sb", where=nn.BatchNorm2d)
    sbattn.attach(model, "se", where=nn.LayerNorm, channels=8)  # as a ConvNeXt block's norm: channels-last
    traced = torch.fx.symbolic_trace(model.eval())
    with pytest.raises(ValueError, match=r"after module '3' \(LayerNorm\) takes \(N, 8, H, W\) tensors, "
                                         r"got \(2, 6, 6, 8\); it looks channels-last"):
        traced(torch.randn(2, 3, 6, 6))
    sbattn.detach(model)
    sbattn.attach(model, "sb", where=nn.BatchNorm2d)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(traced(x), model(x))
