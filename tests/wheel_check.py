"""`make test-wheel`'s checks of what `python -m build` made (not collected by pytest: no test_ prefix).

    python tests/wheel_check.py contents DIST    the sdist and the wheel in DIST hold what they should, and only that
    python tests/wheel_check.py installed DIST   in a venv where the wheel is installed (run it from outside the
                                                 checkout): the import, the version, the command, a hub entry

Each problem is one line on stderr; the exit status is 1 when there is any.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The sdist is the package and what builds it (MANIFEST.in); no tests, docs, data or caches.
SDIST_TOP = {"PKG-INFO", "pyproject.toml", "setup.cfg", "MANIFEST.in", "README.md", "LICENSE", "CHANGELOG.md",
             "sbattn", "sbattn.egg-info"}


def project_version() -> str:
    """sbattn/version.py's version, which CHANGELOG.md's newest section must name."""
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "sbattn" / "version.py").read_text()).group(1)
    changelog = re.findall(r"^## (\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    if not changelog or changelog[0] != version:
        raise SystemExit(f"wheel check: CHANGELOG.md's newest section is {changelog[:1]}, sbattn/version.py says "
                         f"{version}")
    return version


def package_files() -> set[str]:
    """The checkout's package as the wheel should hold it: its modules and py.typed."""
    files = {p for p in (ROOT / "sbattn").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    modules = {p.relative_to(ROOT).as_posix() for p in files if p.suffix == ".py"}
    return modules | {"sbattn/py.typed"}  # required even where the checkout has lost it


def _a_module(name: str) -> bool:
    return "__pycache__" not in name and (name.endswith(".py") or name == "sbattn/py.typed")


def wheel_problems(names: list[str], read, version: str) -> list[str]:
    """What is wrong with a wheel holding `names` (read(name) gives a member's bytes)."""
    info = f"sbattn-{version}.dist-info"
    problems = [f"the wheel lacks {name}" for name in sorted(package_files() - set(names))]
    for name in names:
        if name.startswith(f"{info}/"):
            continue
        if not name.startswith("sbattn/"):
            problems.append(f"the wheel holds {name}, outside the package")
        elif not _a_module(name):
            problems.append(f"the wheel holds {name}: not a module of the package (a cache, data?)")
    if f"{info}/licenses/LICENSE" not in names:
        problems.append(f"the wheel lacks {info}/licenses/LICENSE")
    elif read(f"{info}/licenses/LICENSE") != (ROOT / "LICENSE").read_bytes():
        problems.append("the wheel's LICENSE differs from the checkout's")
    if f"{info}/METADATA" not in names:
        return problems + [f"the wheel lacks {info}/METADATA"]
    metadata = read(f"{info}/METADATA").decode()
    for line in (f"Version: {version}", "License-Expression: MIT", "License-File: LICENSE"):
        if f"\n{line}\n" not in metadata:
            problems.append(f"the wheel's METADATA lacks the line {line!r}")
    if "sbattn = sbattn.cli:main" not in read(f"{info}/entry_points.txt").decode():
        problems.append("the wheel's entry_points.txt lacks the sbattn command")
    return problems


def sdist_problems(names: list[str], version: str) -> list[str]:
    """What is wrong with an sdist holding `names`."""
    top = f"sbattn-{version}"
    problems = [f"the sdist holds {name}, outside {top}/" for name in names if name.split("/")[0] != top]
    inside = {name.split("/", 1)[1] for name in names if "/" in name}
    for name in sorted(inside):
        if name.split("/")[0] not in SDIST_TOP:
            problems.append(f"the sdist holds {name}: not the package or what builds it (tests, docs, data?)")
        elif name.startswith("sbattn/") and not _a_module(name):
            problems.append(f"the sdist holds {name}: not a module of the package (a cache, data?)")
    problems += [f"the sdist lacks {name}" for name in sorted(package_files() - inside)]
    problems += [f"the sdist lacks {name}" for name in ("pyproject.toml", "LICENSE", "README.md", "PKG-INFO")
                 if name not in inside]
    return problems


def the_one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"wheel check: {dist} holds {len(found)} files {pattern}, not one (build into an empty "
                         f"folder)")
    return found[0]


def check_contents(dist: Path) -> list[str]:
    version = project_version()
    wheel = the_one(dist, "*.whl")
    if not wheel.name.startswith(f"sbattn-{version}-py3-none-any"):
        return [f"the wheel is {wheel.name}, not sbattn {version} for any platform"]
    with zipfile.ZipFile(wheel) as z:
        problems = wheel_problems(z.namelist(), z.read, version)
    sdist = the_one(dist, "*.tar.gz")
    if sdist.name != f"sbattn-{version}.tar.gz":
        return problems + [f"the sdist is {sdist.name}, not sbattn-{version}.tar.gz"]
    with tarfile.open(sdist) as t:
        return problems + sdist_problems([m.name for m in t.getmembers() if m.isfile()], version)


def check_installed(dist: Path) -> list[str]:
    import sbattn
    import torch

    problems = []
    version = the_one(dist, "*.whl").name.split("-")[1]
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    if Path(sbattn.__file__).resolve() != site / "sbattn" / "__init__.py":
        return [f"sbattn was imported from {sbattn.__file__}, not the installed wheel (in {site})"]
    if sbattn.__version__ != version:
        problems.append(f"the installed sbattn says {sbattn.__version__}, its wheel {version}")
    if not (Path(sbattn.__file__).parent / "py.typed").is_file():
        problems.append("the installed package lacks py.typed")
    command = Path(sys.executable).parent / "sbattn"  # the console script the wheel installed
    for args, expect in ((["--help"], "summary"), (["summary", "--arch", "resnet20"], "attention=sb")):
        proc = subprocess.run([str(command), *args], capture_output=True, text=True)
        if proc.returncode != 0 or expect not in proc.stdout:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            problems.append(f"sbattn {' '.join(args)} exited {proc.returncode}: {last}")
    # torch.hub.load(<checkout>, ...) puts the checkout first on sys.path while the entry runs, where the checkout's
    # sbattn would shadow the wheel's: the checkout's hubconf.py is loaded from a folder of its own.
    with tempfile.TemporaryDirectory() as hub:
        shutil.copy(ROOT / "hubconf.py", hub)
        model = torch.hub.load(hub, "vgg16", source="local", attention="sb")
    blocks = [m for m in model.modules() if isinstance(m, sbattn.ShiftBalance)]
    built_from = Path(sys.modules[type(model).__module__].__file__).resolve()
    if not built_from.is_relative_to(site / "sbattn"):
        problems.append(f"torch.hub.load(hubconf.py, 'vgg16') built its model from {built_from}, not the wheel's")
    elif len(blocks) != 4 or tuple(model.eval()(torch.zeros(2, 3, 32, 32)).shape) != (2, 10):
        problems.append(f"torch.hub.load(hubconf.py, 'vgg16', attention='sb') gave {len(blocks)} SB blocks (not 4) "
                        "or not 10 logits")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("contents", "installed"):
        print("usage: python tests/wheel_check.py contents|installed DIST", file=sys.stderr)
        return 2
    dist = Path(argv[1]).resolve()
    problems = (check_contents if argv[0] == "contents" else check_installed)(dist)
    for problem in problems:
        print(f"wheel check: {problem}", file=sys.stderr)
    if not problems:
        print(f"wheel check: {argv[0]} of {dist} as they should be")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
