"""SB and SE in timm's networks, attach on a timm ConvNeXt, FX feature extraction, and the zoo's timm blocks in a
suite. Run in the interoperability environment (`make test-interop`: the newest torch with timm); the main
`pytest` does not collect this folder."""
import functools
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
from timm.layers import LayerNorm2d  # noqa: E402
from timm.models import create_feature_extractor  # noqa: E402

import sbattn  # noqa: E402
from sbattn import ShiftBalance, SqueezeExcite  # noqa: E402
from sbattn.cli import main  # noqa: E402


# Each network's attention argument, and how many blocks it places.
NETWORKS = {
    "resnet18": (lambda layer: {"block_args": {"attn_layer": layer}}, 8),
    "resnet50": (lambda layer: {"block_args": {"attn_layer": layer}}, 16),
    "efficientnet_b0": (lambda layer: {"se_layer": layer}, 16),
}
LAYERS = {"sb": ShiftBalance, "se": SqueezeExcite, "sb-sigmoid": functools.partial(ShiftBalance, activation="sigmoid")}


def build(name: str, layer) -> nn.Module:
    torch.manual_seed(0)
    arguments, _ = NETWORKS[name]
    return timm.create_model(name, num_classes=10, **arguments(layer))


def blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (ShiftBalance, SqueezeExcite))]


# Each network with each block; the partial (the same class) in one network.
@pytest.mark.parametrize("name, layer", [(n, k) for n in NETWORKS for k in ("sb", "se")] + [("resnet18", "sb-sigmoid")])
def test_timm_networks_with_sb_and_se_as_their_attention_layers(name, layer, tmp_path):
    model = build(name, LAYERS[layer])
    assert len(blocks(model)) == NETWORKS[name][1]
    if layer == "sb-sigmoid":
        assert all(b.activation == "sigmoid" for b in blocks(model))
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 2, 3, 4]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for b in blocks(model) for p in b.parameters())
    # Clipped, as timm's recipes clip: the reference's blocks (BatchNorm in the branch, SB's lambda ~ N(0, 1)) give
    # an untrained EfficientNet-B0 gradient norms of 1e3 to 1e6 on a few samples, and one plain step breaks it.
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    again = build(name, LAYERS[layer]).eval()
    again.load_state_dict(torch.load(tmp_path / "weights.pt"))
    with torch.no_grad():
        assert torch.equal(again(x), logits)


def test_efficientnet_gives_sb_timms_own_se_widths():
    # EfficientNet hands its SE layer rd_ratio = se_ratio / exp_ratio and its activation (SiLU) as act_layer.
    sb = build("efficientnet_b0", ShiftBalance)
    torch.manual_seed(0)
    reference = timm.create_model("efficientnet_b0", num_classes=10)
    se_widths = [(m.conv_reduce.in_channels, m.conv_reduce.out_channels) for m in reference.modules()
                 if type(m).__name__ == "SqueezeExcite"]
    assert [(b.branch[0].in_features, b.branch[0].out_features) for b in blocks(sb)] == se_widths
    assert all(isinstance(b.branch[2], nn.SiLU) for b in blocks(sb))


def test_timm_builds_the_blocks_on_the_meta_device_and_in_a_dtype():
    model = timm.create_model("resnet18", num_classes=10, block_args={"attn_layer": ShiftBalance}, device="meta",
                              dtype=torch.float64)
    tensors = [t for b in blocks(model) for t in [*b.parameters(), *b.buffers()] if t.is_floating_point()]
    assert tensors and all(t.device.type == "meta" and t.dtype == torch.float64 for t in tensors)


def test_attach_on_a_timm_convnext_infers_each_stages_width():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=10)
    sbattn.attach(model, "sb", where=lambda name, m: name.endswith("conv_dw"))
    assert sorted({model.get_submodule(n).branch[0].in_features for n in sbattn.attached(model)}) == [40, 80, 160,
                                                                                                       320]
    sbattn.attach(model, "se", where=LayerNorm2d)  # convnext_atto's norms are LayerNorm2d (conv_mlp=True)
    x = torch.randn(2, 3, 64, 64)
    model(x).logsumexp(1).mean().backward()
    assert len(sbattn.attached(model)) == 12 + 17  # and one after each of its 17 LayerNorm2d
    assert all(model.get_submodule(n).branch[0].weight.grad is not None for n in sbattn.attached(model))


def test_attach_after_a_channels_last_layernorm_names_the_module():
    model = timm.create_model("convnext_atto", num_classes=10, conv_mlp=False)  # blocks norm (N, H, W, C)
    name = "stages.0.blocks.0.norm"
    with pytest.raises(ValueError, match=r"'stages.0.blocks.0.norm' \(LayerNorm\).*channels-last"):
        sbattn.attach(model, "sb", where=[name])
    sbattn.attach(model, "sb", where=[name], channels=40)
    with pytest.raises(ValueError, match=rf"after module '{name}' \(LayerNorm\) takes \(N, 40, H, W\) tensors, "
                                         r"got \(2, 16, 16, 40\); it looks channels-last"):
        model(torch.randn(2, 3, 64, 64))


def test_fx_tracing_and_timms_feature_extraction_of_sb_models():
    x = torch.randn(2, 3, 64, 64)
    model = build("resnet18", ShiftBalance).eval()
    traced = torch.fx.symbolic_trace(model)
    assert torch.equal(traced(x), model(x))
    features = create_feature_extractor(model, return_nodes={"layer1.0.se.branch.4": "branch", "layer4": "layer4"})
    out = features(x)
    assert out["branch"].shape == (2, 64) and out["layer4"].shape == (2, 512, 2, 2)
    vgg = sbattn.vgg16(attention="sb", width=0.25).eval()
    stages = create_feature_extractor(vgg, return_nodes=[f"features.{i}" for i in range(4)])
    assert [v.shape[1] for v in stages(torch.randn(2, 3, 32, 32)).values()] == [16, 32, 64, 128]
    pyramid = timm.create_model("resnet18", features_only=True, feature_cls="fx",
                                block_args={"attn_layer": SqueezeExcite})
    assert [f.shape[1] for f in pyramid(x)] == [64, 64, 128, 256, 512]


def test_the_zoo_is_timms_modules():
    from timm.layers.cbam import CbamModule
    from timm.layers.eca import EcaModule
    from timm.layers.global_context import GlobalContext
    eca = sbattn.create_attention("eca", 64, ratio=0.5, activation="tanh")  # a model's options: SB's dropped
    cbam = sbattn.create_attention("cbam", 64, ratio=0.5)
    gc, gca = (sbattn.create_attention(k, 64, ratio=0.5, device="meta") for k in ("gc", "gca"))
    assert type(eca) is EcaModule and type(cbam) is CbamModule and type(gc) is type(gca) is GlobalContext
    assert cbam.channel.fc1.out_channels == 32 and gc.mlp_scale.fc1.out_channels == 32  # ratio is rd_ratio
    assert gc.mlp_add is None and gca.mlp_scale is None and next(gc.parameters()).device.type == "meta"
    assert all(sbattn.nn.is_attention(b) for b in (eca, cbam, gc, gca))
    model = sbattn.vgg16(attention="cbam", width=0.125)
    assert sum(isinstance(m, CbamModule) for m in model.modules()) == 4
    with pytest.raises(ValueError, match="CbamModule.*unexpected keyword argument 'lambda_'"):
        sbattn.create_attention("cbam", 64, lambda_=1)


def test_timm_is_imported_only_when_a_zoo_block_is_built():
    code = ("import sys, sbattn; print('timm' in sys.modules); sbattn.create_attention('eca', 8); "
            "print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_the_zoo_in_a_one_epoch_compare(tmp_path, capsys):
    kinds = ["sb", "eca", "cbam", "gc", "gca"]
    code = main(["compare", "--attention", ",".join(kinds), "--dataset", "fake", "--epochs", "1",
                 "--milestones", "[1]", "--width", "0.0625", "--precision", "fp32", "--device", "cpu",
                 "--jobs", "1", "--output-dir", str(tmp_path)])
    assert code == 0
    table = (tmp_path / "compare.md").read_text()
    for label in ("SB(Sigmoid)", "ECA", "CBAM", "GC(scale)", "GC(add)"):
        assert f"| {label} |" in table
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    params = {row["label"]: row["params"] for row in rows}
    expected = sum(p.numel() for p in sbattn.vgg16(attention="cbam", width=0.0625).parameters())
    assert params["CBAM"] == expected and len(rows) == len(kinds)


def test_this_environment_runs_a_torch_past_the_old_cap():
    # pyproject once capped torch below 2.14; this environment exists to run what that cap kept out.
    assert tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 14)
