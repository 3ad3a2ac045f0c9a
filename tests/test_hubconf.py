"""hubconf.py, what torch.hub.load reads: its dependencies declared truthfully (torch.hub checks them before an
entry runs), every entry's options by name with the builder's defaults, and docstrings that state them."""
import importlib.metadata
import importlib.util
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sbattn
from sbattn import models

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = ["vgg16", "resnet20", "resnet56", "resnet18"]


def _hubconf():
    spec = importlib.util.spec_from_file_location("sbattn_hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HUBCONF = _hubconf()

# In a fresh interpreter: the third-party modules `import hubconf` imports, then those building each entry does.
_PROBE = """
import json, sys, sysconfig
from pathlib import Path
at_start = set(sys.modules)  # the interpreter's own, and site's hooks
STDLIB = [Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")]
def installed(module):  # a file of an installed package: not the standard library's, not made up by an extension
    file = getattr(module, "__file__", None)  # Cython's runtime modules have none
    path = Path(file).resolve() if file else None
    return path is not None and ("site-packages" in path.parts or not any(path.is_relative_to(s) for s in STDLIB))
def third_party():
    return {m.split(".")[0] for m, module in list(sys.modules.items()) if m not in at_start and installed(module)
            and m.split(".")[0] not in sys.stdlib_module_names}
sys.path.insert(0, sys.argv[1])
import hubconf
on_import = third_party()
for name in sys.argv[2:]:
    for attention in (None, "sb", "se"):
        getattr(hubconf, name)(attention=attention, width=0.25)
print(json.dumps([sorted(on_import), sorted(third_party())]))
"""

def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _requirements(distribution: str, seen: set) -> set:
    """The distributions `distribution` requires, transitively (extras left out): what installing it brings."""
    try:
        requirements = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:  # one whose marker leaves it out here
        return seen
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        name = _name(re.match(r"[A-Za-z0-9._-]+", requirement).group())
        if name not in seen:
            seen.add(name)
            _requirements(name, seen)
    return seen


def test_hubconf_declares_every_third_party_module_building_a_model_imports():
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT), *ENTRIES], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    on_import, imported = json.loads(proc.stdout)
    # sbattn comes after torch.hub's dependency check, so that a missing one is named, not a raw ModuleNotFoundError
    assert on_import == ["hubconf"], (f"import hubconf imported {sorted(set(on_import) - {'hubconf'})}: import them "
                                      "inside the entries, after torch.hub's check of `dependencies`")
    declared = set(HUBCONF.dependencies)
    brought = _requirements("torch", {"torch"})  # what torch itself requires comes with it
    owners = importlib.metadata.packages_distributions()
    undeclared = [m for m in imported if m not in declared | {"hubconf", "sbattn"}
                  and not {_name(d) for d in owners.get(m, [])} & brought]
    assert not undeclared, f"hubconf.py's dependencies lack {undeclared} (declared: {sorted(declared)})"
    assert all(importlib.util.find_spec(m) for m in declared)  # module names, as torch.hub looks them up
    assert declared <= set(imported)  # and nothing declared that is not needed


@pytest.mark.parametrize("missing", HUBCONF.dependencies)
def test_a_missing_dependency_is_named_by_torch_hub(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # find_spec then says it is not installed
    with pytest.raises(RuntimeError, match=f"Missing dependencies: {missing}$"):
        torch.hub.load(str(ROOT), "vgg16", source="local")


def test_the_entries_are_the_builders_with_every_option_by_name():
    listed = [f for f in dir(HUBCONF) if callable(getattr(HUBCONF, f)) and not f.startswith("_")]  # torch.hub.list's
    assert listed == sorted(ENTRIES)
    sb_defaults = inspect.signature(sbattn.ShiftBalance).parameters
    for name in ENTRIES:
        entry = inspect.signature(getattr(HUBCONF, name)).parameters
        builder = inspect.signature(getattr(models, name)).parameters
        named = {k: p.default for k, p in builder.items() if p.kind is not p.VAR_KEYWORD}
        assert {k: entry[k].default for k in named if k in entry} == named, name  # the builder's defaults
        assert set(entry) == {"pretrained", *named, "lambda_init", "block_options"}, name  # nothing hidden
        assert entry["lambda_init"].default == sb_defaults["lambda_init"].default


def test_each_entry_documents_each_option_with_its_true_default():
    for name in ENTRIES:
        entry = getattr(HUBCONF, name)
        doc = entry.__doc__  # what torch.hub.help prints
        assert "untrained" in doc.splitlines()[0]
        for p in inspect.signature(entry).parameters.values():
            if p.default is not p.empty:
                assert re.search(rf"^    {p.name}={re.escape(repr(p.default))}: \S", doc, re.M), (name, p.name)
        assert "attention=None: None" in doc and "(no attention)" in doc


def test_the_default_entry_has_no_attention_and_sb_is_asked_for_by_name():
    blocks = [m for m in HUBCONF.resnet20().modules() if sbattn.nn.is_attention(m)]
    assert blocks == []
    model = HUBCONF.resnet20(attention="sb", lambda_init="zeros", ratio=0.25)
    blocks = [m for m in model.modules() if isinstance(m, sbattn.ShiftBalance)]
    assert len(blocks) == 9 and all(not b.lam.detach().any() for b in blocks)
    with pytest.raises(ValueError, match="no pretrained weights for vgg16"):
        HUBCONF.vgg16(pretrained=True)
