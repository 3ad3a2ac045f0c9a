"""docs/api.md, the API reference: every public name of every public module, with its signature and one line,
and no older than the code (regenerate it with `.venv/bin/python docs/make_api.py`)."""
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import sbattn
from sbattn.train import RunResult

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "regenerate it: .venv/bin/python docs/make_api.py"
# Public names without a docstring yet, in files being edited elsewhere; remove each as it gets one.
NOT_YET_DOCUMENTED = {"sbattn.config.Recipe", "sbattn.config.TrainConfig", "sbattn.models.VGG",
                      "sbattn.models.format_summary", "sbattn.models.Summary", "sbattn.cli.build_parser"}


def _make_api():
    spec = importlib.util.spec_from_file_location("sbattn_make_api", ROOT / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE_API = _make_api()


def _sections(text: str) -> dict:
    parts = re.split(r"^## (\S+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_the_api_reference_is_what_the_generator_writes_now():
    assert (ROOT / "docs" / "api.md").read_text() == MAKE_API.render(), f"docs/api.md is stale: {REGENERATE}"


def test_every_public_name_has_its_line_in_its_module_section():
    sections = _sections((ROOT / "docs" / "api.md").read_text())
    assert list(sections) == MAKE_API.MODULES + MAKE_API.DEPRECATED
    for module_name in MAKE_API.MODULES:
        for name in importlib.import_module(module_name).__all__:
            line = re.search(rf"^- `{re.escape(name)}[(` ].*", sections[module_name], re.M)
            assert line, f"docs/api.md lacks {module_name}.{name}: {REGENERATE}"
    for module_name in MAKE_API.DEPRECATED:  # one line, naming what it re-exports from where they are documented
        assert sections[module_name].strip().startswith("Deprecated"), module_name
        for name in importlib.import_module(module_name).__all__:
            assert f"`{name}`" in sections[module_name], f"docs/api.md lacks {module_name}.{name}: {REGENERATE}"


def test_every_subpackage_is_a_documented_module():
    packages = {f"sbattn.{m.name}" for m in pkgutil.iter_modules(sbattn.__path__) if m.ispkg}
    missing = packages - set(MAKE_API.MODULES + MAKE_API.DEPRECATED)
    assert not missing, f"docs/make_api.py's MODULES lacks {sorted(missing)}"


def test_every_public_function_and_class_has_a_docstring():
    exempt = {id(getattr(importlib.import_module(m), n)) for m, n in (d.rsplit(".", 1) for d in NOT_YET_DOCUMENTED)}
    undocumented = sorted(f"{module_name}.{name}" for module_name in MAKE_API.MODULES
                          for name, obj in MAKE_API.public(module_name)
                          if MAKE_API.is_documentable(obj) and MAKE_API.docstring(obj) is None
                          and id(obj) not in exempt)
    assert not undocumented, f"public names without a docstring (docs/api.md says so): {undocumented}"


def test_the_generator_tells_a_written_docstring_from_none():
    def documented():
        """First line
        goes on.

        Details."""

    class Bare:
        pass

    assert MAKE_API.summary(documented) == "First line goes on."
    assert MAKE_API.docstring(Bare) is None and MAKE_API.summary(Bare) == MAKE_API.NO_DOCSTRING
    assert MAKE_API.docstring(RunResult)  # a dataclass's written docstring, not its generated signature
    assert MAKE_API.signature(sbattn.vgg16).startswith("(attention: str | None = None, ")  # annotations unquoted
