"""replace_attention (SB where a network has SE) on sbattn's own models, and state dicts saved before attach or
replace_attention loading after it. timm's and torchvision's SE modules: tests/interop/test_replace.py."""
import pytest
import torch
from torch import nn

import sbattn
from sbattn import ShiftBalance, SqueezeExcite


def blocks(model: nn.Module, cls) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, cls)}


def se_resnet20() -> nn.Module:
    torch.manual_seed(0)
    return sbattn.create_model("resnet20", attention="se", ratio=0.25)


def test_every_se_becomes_sb_of_the_same_width_and_norm_starting_as_the_identity():
    model = se_resnet20()
    before = blocks(model, SqueezeExcite)
    replaced = sbattn.replace_attention(model, "sb")
    assert list(replaced) == list(before) and all(replaced[n] is before[n] for n in before)  # what was taken out
    after = blocks(model, ShiftBalance)
    assert list(after) == list(before) and not blocks(model, SqueezeExcite)
    for name, sb in after.items():
        assert sb.branch[0].in_features == before[name].branch[0].in_features
        assert sb.branch[0].out_features == before[name].branch[0].out_features  # the ratio kept
        assert sb.branch.branch_norm == "bn"  # SE's norm kept
        assert sb.activation == "tanh" and torch.equal(sb.lam, torch.zeros_like(sb.lam))  # every timm door's SB
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        ids = {n: torch.randn(2, sb.channels, 4, 4) for n, sb in after.items()}
        assert all(torch.equal(sb(ids[n]), ids[n]) for n, sb in after.items())  # the identity at init
    model.train()(x).sum().backward()
    assert all(sb.lam.grad is not None and sb.lam.grad.abs().sum() > 0 for sb in after.values())  # and learns
    kept = se_resnet20()
    sbattn.replace_attention(kept, "sb", activation="sigmoid", lambda_init="normal")  # the options win
    assert all(sb.activation == "sigmoid" and sb.lam.abs().sum() > 0 for sb in blocks(kept, ShiftBalance).values())


def test_options_override_what_is_kept_and_where_selects():
    model = se_resnet20()
    names = list(blocks(model, SqueezeExcite))
    replaced = sbattn.replace_attention(model, "sb", where=names[:2], ratio=0.5, activation="tanh",
                                        branch_norm="none")
    assert list(replaced) == names[:2] and len(blocks(model, SqueezeExcite)) == len(names) - 2
    for sb in blocks(model, ShiftBalance).values():
        assert sb.branch[0].out_features == sb.branch[0].in_features // 2
        assert sb.activation == "tanh" and sb.branch.branch_norm == "none"


def test_the_new_blocks_follow_the_old_ones_dtype_and_mode():
    model = se_resnet20().double().eval()
    sbattn.replace_attention(model, "sb")
    assert all(not sb.training and sb.lam.dtype == torch.float64 for sb in blocks(model, ShiftBalance).values())


def test_nothing_to_replace_or_a_bad_option_is_one_line_and_the_model_unchanged():
    with pytest.raises(ValueError, match="found no SE-like module to replace in this ResNet") as error:
        sbattn.replace_attention(sbattn.create_model("resnet20"), "sb")
    assert "\n" not in str(error.value)
    model = se_resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        sbattn.replace_attention(model, "sb", activation="nope")
    assert blocks(model, ShiftBalance) == {} and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="needs an attention kind"):
        sbattn.replace_attention(model, "none")


def test_a_state_dict_saved_before_attach_loads_after_it():
    torch.manual_seed(0)
    source = sbattn.create_model("resnet20")  # no attention
    saved = {k: v + 1 for k, v in source.state_dict().items()}  # other weights than a fresh model's
    model = sbattn.attach(sbattn.create_model("resnet20"), "sb", where=lambda name, m: name.endswith("bn2"))
    attached = next(k for k in model.state_dict() if ".attention." in k).split(".attention.")[0]
    stray = f"{attached}.stray"  # neither before nor after attach: reported as given, never renamed
    missing, unexpected = model.load_state_dict({**saved, stray: torch.zeros(1)}, strict=False)
    assert unexpected == [stray] and missing and all(".attention." in k for k in missing)  # `<name>.weight` mapped
    loaded = sbattn.detach(model).state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_load_pretrained_says_which_keys_are_new_and_refuses_a_stranger():
    torch.manual_seed(0)
    saved = sbattn.create_model("resnet20").state_dict()
    model = sbattn.attach(sbattn.create_model("resnet20"), "sb", where=lambda name, m: name.endswith("bn2"))
    result = sbattn.load_pretrained(model, saved)
    attention_keys = [k for k in model.state_dict() if ".attention." in k]
    assert sorted(result.new) == sorted(attention_keys) and result.dropped == []
    stranger = sbattn.create_model("resnet56").state_dict()
    with pytest.raises(ValueError, match="not this model's without its attention blocks: unexpected") as error:
        sbattn.load_pretrained(model, stranger)
    assert "\n" not in str(error.value)
    extra = {**saved, **{f"extra{i}.weight": torch.zeros(1) for i in range(5)}}  # three named, the rest counted
    with pytest.raises(ValueError, match=r"unexpected (extra[0-4]\.weight, ){2}extra[0-4]\.weight and 2 more$"):
        sbattn.load_pretrained(model, extra)


def test_load_pretrained_after_replace_keeps_the_branch_and_adds_lambda():
    model = se_resnet20()
    saved = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    sbattn.replace_attention(model, "sb")
    result = sbattn.load_pretrained(model, saved)
    assert result.new and all(k.endswith(".lam") for k in result.new)  # SB's own: its branch is SE's
    state = model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_a_pickled_attached_module_from_before_its_width_check_still_runs():
    import pickle
    model = sbattn.attach(nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)), "sb")
    wrapper = model[1]
    del wrapper.__dict__["channels"], wrapper.__dict__["place"]  # as an object pickled by an older sbattn
    restored = pickle.loads(pickle.dumps(model))
    assert restored[1].channels is None and restored(torch.randn(2, 3, 4, 4)).shape == (2, 8, 4, 4)


def test_a_state_dict_of_another_width_leaves_the_new_blocks_as_built():
    model = se_resnet20()  # SE at ratio 0.25
    saved = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    sbattn.replace_attention(model, "sb", ratio=0.5)
    built = {k: v.clone() for k, v in model.state_dict().items()}
    result = sbattn.load_pretrained(model, saved)
    state = model.state_dict()
    widths = [k for k in result.dropped if saved[k].shape != state[k].shape]
    assert widths and set(widths) <= set(result.new)  # SE's branch of the other width: dropped, SB's own new
    assert all(torch.equal(state[k], built[k]) for k in result.new)
    assert all(torch.equal(state[k], saved[k]) for k in saved if k not in result.dropped)


def test_a_kind_that_ignores_the_activation_keeps_the_networks_gate():
    model = se_resnet20()
    sbattn.replace_attention(model, "se", gate_layer="hard_sigmoid")
    sbattn.replace_attention(model, "se", activation="tanh")  # a model-wide option that SE does not take
    assert {se.gate_name for se in blocks(model, SqueezeExcite).values()} == {"hard_sigmoid"}


@pytest.mark.parametrize("gate, check", [
    ("softmax", lambda g: isinstance(g, nn.Softmax) and g.dim == 1),
    (nn.LeakyReLU(0.2), lambda g: isinstance(g, nn.LeakyReLU) and g.negative_slope == 0.2),
    (torch.sigmoid, lambda g: torch.equal(g(torch.zeros(2, 4)), torch.full((2, 4), 0.5))),
])
def test_a_gate_is_kept_with_its_settings(gate, check):
    model = se_resnet20()
    sbattn.replace_attention(model, "sb", gate_layer=gate)
    sbattn.replace_attention(model, "se")  # SB's gate, whatever it is, becomes SE's
    assert all(check(se.gate) for se in blocks(model, SqueezeExcite).values())
    model(torch.randn(2, 3, 32, 32))
