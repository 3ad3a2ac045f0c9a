"""What a package index and a type checker see: the licence, the changelog, classifiers, URLs, py.typed."""
import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest

import sbattn

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
BUILD = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]


def _wheel_check():
    spec = importlib.util.spec_from_file_location("sbattn_wheel_check", ROOT / "tests" / "wheel_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_license_file_is_the_mit_license_pyproject_names():
    # PEP 639: an SPDX expression and the file, which setuptools 77 first reads (and then refuses the classifier)
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert BUILD["requires"] == ["setuptools>=77"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the sbattn authors" in text
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]


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


def test_the_sdist_ships_no_tests_and_builds_leave_nothing_to_commit():
    # setuptools adds tests/test*.py to an sdist by default; without conftest.py and the rest they cannot run
    assert "prune tests" in (ROOT / "MANIFEST.in").read_text().splitlines()
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "dist/" in ignored and "build/" in ignored  # make test-wheel builds under build/


def test_make_test_runs_the_wheel_check():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\btest-wheel\b", makefile, re.M)
    target = makefile.split("\ntest-wheel:\n")[1].split("\n\n")[0]
    assert "-m build" in target and "-e " not in target and "$(TORCH)" in target
    assert "wheel_check.py contents" in target and "wheel_check.py installed" in target


def test_the_wheel_check_names_what_a_wheel_or_sdist_lacks_or_should_not_hold():
    check = _wheel_check()
    version = sbattn.__version__
    info = f"sbattn-{version}.dist-info"
    metadata = (f"Metadata-Version: 2.4\nName: sbattn\nVersion: {version}\nLicense-Expression: MIT\n"
                "License-File: LICENSE\n")
    files = {f"{info}/licenses/LICENSE": (ROOT / "LICENSE").read_bytes(), f"{info}/METADATA": metadata.encode(),
             f"{info}/entry_points.txt": b"[console_scripts]\nsbattn = sbattn.cli:main\n",
             **{name: b"" for name in check.package_files()}}
    assert check.wheel_problems(list(files), files.__getitem__, version) == []
    broken = {k: v for k, v in files.items() if k != "sbattn/py.typed"}
    broken.update({"tests/test_x.py": b"", "sbattn/__pycache__/x.pyc": b"", "sbattn/data/cache.npz": b"",
                   f"{info}/METADATA": metadata.replace("License-Expression: MIT\n", "").encode()})
    problems = check.wheel_problems(list(broken), broken.__getitem__, version)
    assert problems == ["the wheel lacks sbattn/py.typed", "the wheel holds tests/test_x.py, outside the package",
                        "the wheel holds sbattn/__pycache__/x.pyc: not a module of the package (a cache, data?)",
                        "the wheel holds sbattn/data/cache.npz: not a module of the package (a cache, data?)",
                        "the wheel's METADATA lacks the line 'License-Expression: MIT'"]
    top = f"sbattn-{version}"
    sdist = [f"{top}/{name}" for name in ("PKG-INFO", "pyproject.toml", "LICENSE", "README.md", *check.package_files())]
    assert check.sdist_problems(sdist, version) == []
    problems = check.sdist_problems([*sdist, f"{top}/tests/test_x.py", f"{top}/sbattn/nn/__pycache__/a.pyc"], version)
    assert [p.split(":")[0] for p in problems] == ["the sdist holds sbattn/nn/__pycache__/a.pyc",
                                                   "the sdist holds tests/test_x.py"]
