"""What a package index and a type checker see: the licence, the changelog, classifiers, URLs, py.typed."""
import importlib.metadata
import re
from pathlib import Path

import pytest

import sbattn

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_license_file_is_the_mit_license_pyproject_names():
    assert PROJECT["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the sbattn authors" in text
    assert "License :: OSI Approved :: MIT License" in PROJECT["classifiers"]


def test_one_version_the_package_its_metadata_and_the_changelog_agree():
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (\d+\.\d+\.\d+)", text, re.M)
    assert versions[0] == sbattn.__version__  # the newest section is this version
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    # pyproject holds no version of its own: the build reads the package's
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "sbattn.version.__version__"}
    assert importlib.metadata.version("sbattn") == sbattn.__version__  # what pip installed says the same


def test_classifiers_and_urls_say_only_what_is_true():
    classifiers = PROJECT["classifiers"]
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3" in classifiers
    assert PROJECT["urls"] == {"Reference implementation": "https://github.com/yuranusduke/Shift_and_Balance_Attention"}
    assert "seed" not in PROJECT["description"]  # the reproduced repository is "the reference implementation"


def test_the_package_is_typed():
    assert (ROOT / "sbattn" / "py.typed").is_file()
    assert "py.typed" in SETUPTOOLS["package-data"]["sbattn"]


def test_the_optional_extras_the_errors_name_exist():
    extras = PROJECT["optional-dependencies"]
    assert any(r.startswith("onnx") for r in extras["export"])
    assert any(r.startswith("tensorboard") for r in extras["tensorboard"])
    assert {"sbattn[export]", "sbattn[tensorboard]"} <= set(extras["test"])  # make test installs what tests read
