"""timm's networks by name (--arch timm:NAME) where timm is not installed: refused in one line naming the extra, and
`import sbattn` neither imports timm nor changes what `import timm` does. With timm: tests/interop/test_timm_models.py."""
import importlib.util
import subprocess
import sys

import pytest

import sbattn
from sbattn.cli import main

no_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")


@no_timm
def test_a_timm_arch_without_timm_names_the_extra(capsys):
    with pytest.raises(sbattn.ConfigError, match=r"timm is not installed: pip install \"sbattn\[timm\]\"") as error:
        sbattn.create_model("timm:resnet18", attention="sb")
    assert "\n" not in str(error.value)
    assert main(["train", "--arch=timm:resnet18", "--dataset=fake", "--epochs=1", "--device=cpu"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_what_no_timm_network_takes_is_refused_before_timm_is_needed():
    with pytest.raises(sbattn.ConfigError, match="timm's networks take no width multiplier") as error:
        sbattn.TrainConfig(arch="timm:resnet18", width=0.5)
    assert "\n" not in str(error.value)


def test_importing_sbattn_leaves_timm_alone():
    code = ("import sys, sbattn\n"
            "assert 'timm' not in sys.modules\n"
            "try:\n    import timm\nexcept ModuleNotFoundError as e:\n    print('missing', e.name)\n"
            "else:\n    print('imported', 'sbresnet18' in timm.list_models())\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = "missing timm" if importlib.util.find_spec("timm") is None else "imported True"
    assert out.stdout.strip() == expected


def test_the_names_of_sbattns_own_archs_are_as_before():
    assert sbattn.Recipe().run_name == "vgg16_0.5_True_False_tanh"
    assert sbattn.Recipe(arch="resnet20", attention="se", seed=3).run_name == "resnet20_0.5_False_True_tanh_seed3"
