"""The published requirement admits every PyTorch the code works with: a floor, no cap that would make pip
downgrade a user's newer torch; the interoperability environment (tests/interop) runs a release past the old
cap."""
import re
from pathlib import Path

import pytest
import torch

tomllib = pytest.importorskip("tomllib")
PROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]


def requirements(name: str, where: list[str]) -> list[str]:
    return [r for r in where if re.match(rf"{name}\s*([<>=!~;\[]|$)", r)]


def test_torch_has_a_floor_and_no_upper_bound():
    torch_requirement, = requirements("torch", PROJECT["dependencies"])
    assert re.fullmatch(r"torch>=2\.\d+", torch_requirement.replace(" ", "")), torch_requirement


def test_the_running_torch_is_inside_the_published_range():
    floor = tuple(map(int, requirements("torch", PROJECT["dependencies"])[0].split(">=")[1].split(".")))
    assert tuple(map(int, re.match(r"(\d+)\.(\d+)", torch.__version__).groups())) >= floor


def test_the_timm_extra_starts_where_timm_passes_device_and_dtype():
    assert requirements("timm", PROJECT["optional-dependencies"]["timm"]) == ["timm>=1.0.21"]


def test_make_test_tries_the_oldest_timm_the_extra_admits():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    oldest = re.search(r"^TIMM_OLDEST \?= (\S+)$", makefile, re.M)
    floor = requirements("timm", PROJECT["optional-dependencies"]["timm"])[0].split(">=")[1]
    assert oldest and oldest.group(1) == floor
