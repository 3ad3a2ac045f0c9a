"""replace_attention on the timm and torchvision networks that build their own SE (the argument is refused there,
or attach would add SB beside it): each SE found and replaced, the widths kept, forward, backward, features_only,
torch.export, TorchScript, and the network's own state dict loaded after. Interoperability environment."""
import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from timm.layers import EffectiveSEModule, SEModule  # noqa: E402
from timm.models._efficientnet_blocks import SqueezeExcite as EfficientNetSE  # noqa: E402

import sbattn  # noqa: E402
from sbattn import ShiftBalance  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

SE_CLASSES = (SEModule, EffectiveSEModule, EfficientNetSE, torchvision.ops.SqueezeExcitation)
# Each family with its SE: RegNetY and ReXNet (timm's SEModule; ReXNet's with BatchNorm), GhostNet and MobileNetV3
# (EfficientNet's SE with a hard-sigmoid gate), EfficientNet, SE-ResNet, VoVNet's EffectiveSE.
FAMILIES = ["regnety_002", "rexnet_100", "ghostnet_100", "mobilenetv3_small_050", "efficientnet_b0", "seresnet18",
            "ese_vovnet19b_dw"]


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    if name == "torchvision:mobilenet_v3_small":
        return torchvision.models.mobilenet_v3_small(num_classes=10)
    return timm.create_model(name, num_classes=10, **kwargs)


def se_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SE_CLASSES)}


def widths(module: nn.Module) -> tuple[int, int]:
    """(channels, hidden width) of an SE module or an SB block."""
    if isinstance(module, ShiftBalance):
        return module.branch[0].in_features, module.branch[0].out_features
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    channels = convs[-1].out_channels
    return channels, (convs[0].out_channels if len(convs) == 2 else channels // 2)  # ESE: half, by design


@pytest.mark.parametrize("name", FAMILIES + ["torchvision:mobilenet_v3_small"])
def test_sb_replaces_every_se_keeping_its_widths_and_trains(name):
    model = build(name)
    before = se_modules(model)
    saved = model.state_dict()
    replaced = sbattn.replace_attention(model, "sb")
    assert list(replaced) == list(before) and not se_modules(model)  # each one found, none left beside SB
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, ShiftBalance)}
    assert list(blocks) == list(before)
    assert all(widths(blocks[n]) == widths(before[n]) for n in before)
    assert {b.activation for b in blocks.values()} == {"tanh"}  # SB's act, not the SE's gate: every timm door's
    assert all(torch.equal(b.lam, torch.zeros_like(b.lam)) for b in blocks.values())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model.train()(x).sum().backward()
    assert all(b.lam.grad is not None and torch.isfinite(b.lam.grad).all() for b in blocks.values())
    result = sbattn.load_pretrained(model, saved)  # the network's own weights, the SE's in SB's branch
    effective = {n for n, m in before.items() if isinstance(m, EffectiveSEModule)}  # one C x C layer: no place
    assert all(k.endswith(".lam") or k.rpartition(".branch.")[0] in effective for k in result.new), result.new
    assert all(any(k.startswith(f"{n}.") for n in effective) for k in result.dropped), result.dropped


@pytest.mark.parametrize("name", FAMILIES)
def test_features_only_export_and_script_after_replacing(name):
    features = build(name, features_only=True)
    sbattn.replace_attention(features, "sb")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps = features.train()(x)
    assert len(maps) == len(features.feature_info.channels())
    assert [m.shape[1] for m in maps] == features.feature_info.channels()
    model = build(name)
    sbattn.replace_attention(model, "sb")
    model.eval()
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,)).module()
        torch.testing.assert_close(exported(x), expected)
        assert torch.equal(torch.jit.script(model)(x), expected)


def test_other_kinds_in_the_se_places_with_what_they_take():
    model = build("regnety_002")
    n = len(se_modules(model))
    sbattn.replace_attention(model, "eca")  # ECA takes none of SE's widths: they are not passed
    assert len([m for m in model.modules() if type(m).__name__ == "EcaModule"]) == n
    model = build("regnety_002")
    before = {k: widths(m) for k, m in se_modules(model).items()}
    sbattn.replace_attention(model, "timm:se")  # timm's SE again, by the registry's name
    assert {k: widths(m) for k, m in se_modules(model).items()} == before


def test_timm_se_is_timms_module_and_se_the_references():
    assert type(sbattn.create_attention("timm:se", 64)) is SEModule
    assert not any(isinstance(m, nn.BatchNorm1d) for m in sbattn.create_attention("timm:se", 64).modules())
    assert sum(isinstance(m, nn.BatchNorm1d) for m in sbattn.create_attention("se", 64).modules()) == 2


def test_sb_in_place_of_an_nf_nets_se_keeps_the_signals_scale():
    """NF-nets multiply the attention's output by attn_gain (2.0, for the SE gate's mean of about 0.5): SB adds to
    its input and keeps its scale, so the gain becomes 1 (before: the signal doubled at each block)."""
    scales = {}
    for kind in ("se", "sb"):
        torch.manual_seed(0)
        model = timm.create_model("nf_regnet_b0").eval()
        if kind == "sb":
            sbattn.replace_attention(model, "sb")
        gained = [m for m in model.modules() if getattr(m, "attn", None) is not None and hasattr(m, "attn_gain")]
        seen = []
        for block in gained:
            block.attn.register_forward_hook(
                lambda m, args, out, b=block: seen.append(b.attn_gain * out.std().item() / args[0].std().item()))
        with torch.no_grad():
            model(torch.randn(2, 3, 64, 64))
        assert len(seen) == len(gained) > 0
        scales[kind] = seen
    assert all(0.5 < s < 1.5 for s in scales["se"])  # timm's SE with its gain: about 1
    assert scales["sb"] == pytest.approx([1.0] * len(scales["sb"]))  # SB at init: the identity, gain 1


@pytest.mark.parametrize("name", ["ecaresnet26t", "eca_nfnet_l0"])
def test_eca_becomes_sb_of_timms_se_widths_at_its_place(name):
    """ECA holds no channel count: each module's is read from a forward pass on the meta device (the weights
    untouched), and SB of timm's SE widths (1/16, a multiple of 8) takes its place; its forward checks its input's
    channels, so a wrong count fails the real forward."""
    torch.manual_seed(0)
    model = timm.create_model(name)
    ecas = {n: m for n, m in model.named_modules() if type(m).__name__ == "EcaModule"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    replaced = sbattn.replace_attention(model, "sb")
    assert list(replaced) == list(ecas) and all(replaced[n] is ecas[n] for n in ecas)
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, ShiftBalance)}
    assert list(blocks) == list(ecas)
    from timm.layers import make_divisible
    assert all(b.branch[0].out_features == make_divisible(b.channels / 16, 8, round_limit=0.0)  # SEModule's
               for b in blocks.values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items() if k in model.state_dict())
    model.train()(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(b.lam.grad is not None for b in blocks.values())


def test_attention_replace_attention_does_not_take_is_named_in_one_line():
    with pytest.raises(ValueError) as refused:
        sbattn.replace_attention(timm.create_model("skresnet18"), "sb")
    said = str(refused.value)
    assert said.startswith("this ResNet's attention is SelectiveKernel, which replace_attention does not replace (a "
                           "choice between convolutions") and "\n" not in said


def test_a_pretrained_se_networks_weights_carry_into_sb():
    """seresnet18's weights, saved before the replacement: replace_attention on the trained model keeps each SE's
    squeeze and excitation in SB's branch (1x1 convolutions as Linear layers), and load_pretrained maps the saved
    SE keys there too; lambda alone is new. keep_weights=False builds the branch afresh."""
    torch.manual_seed(0)
    trained = timm.create_model("seresnet18")
    saved = {k: v.clone() for k, v in trained.state_dict().items()}
    names = list(se_modules(trained))
    sbattn.replace_attention(trained, "sb")
    fresh = timm.create_model("seresnet18")
    sbattn.replace_attention(fresh, "sb", keep_weights=False)
    result = sbattn.load_pretrained(fresh, saved)
    assert not result.dropped and sorted(result.new) == sorted(f"{n}.lam" for n in names)
    for model in (trained, fresh):
        state = model.state_dict()
        for n in names:
            for se_layer, place in (("fc1", "branch.0"), ("fc2", "branch.3")):
                assert torch.equal(state[f"{n}.{place}.weight"], saved[f"{n}.{se_layer}.weight"].flatten(1))
                assert torch.equal(state[f"{n}.{place}.bias"], saved[f"{n}.{se_layer}.bias"])
    unkept = timm.create_model("seresnet18")
    unkept.load_state_dict(saved)
    sbattn.replace_attention(unkept, "sb", keep_weights=False)
    first = names[0]
    assert not torch.equal(unkept.state_dict()[f"{first}.branch.0.weight"], saved[f"{first}.fc1.weight"].flatten(1))
