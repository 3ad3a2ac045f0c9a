"""The package's layers import one way: nothing imports the command line from below it, nothing imports a layer
above its own, and no module imports itself through a cycle. Function-local imports count too."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sbattn"

# Rank of each layer: a module may import its own layer's modules (within one subpackage) and lower ranks only.
LAYERS = {
    "sbattn.errors": 0, "sbattn.version": 0, "sbattn.files": 0, "sbattn.system": 0,
    "sbattn.nn": 1,
    "sbattn.models": 2, "sbattn.data": 2,
    "sbattn.engine": 3,
    "sbattn.experiments": 4,
    "sbattn.cli": 5,
    "sbattn.__main__": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every sbattn module `path` imports, anywhere in the file, resolved to a module name."""
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool) -> set[str]:
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "sbattn"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sbattn":
                continue
            # `from pkg import name`: name may be a submodule of pkg
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return found - {name}


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer_of(module: str) -> tuple[str, int] | None:
    """(layer, rank) of a module; None for the package facade `sbattn` itself."""
    for prefix, rank in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    return None


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    unplaced = [m for m in graph() if m != "sbattn" and layer_of(m) is None]
    assert not unplaced, f"modules outside every layer: {unplaced}; add them to LAYERS"


def test_imports_point_down():
    wrong = []
    for module, targets in graph().items():
        if module == "sbattn":  # the facade re-exports the library's public names
            continue
        layer, rank = layer_of(module)
        for target in targets:
            if target == "sbattn":
                wrong.append(f"{module} imports the package facade (sbattn/__init__.py); import the module instead")
                continue
            target_layer, target_rank = layer_of(target)
            if target_rank > rank or (target_rank == rank and target_layer != layer):
                wrong.append(f"{module} (layer {layer}) imports {target} (layer {target_layer})")
    assert not wrong, "\n".join(wrong)


def test_nothing_below_the_cli_imports_it():
    below = {m: t for m, t in graph().items() if m not in ("sbattn.__main__",) and not m.startswith("sbattn.cli")}
    offenders = [m for m, targets in below.items() if any(t.startswith("sbattn.cli") for t in targets)]
    assert not offenders, offenders


def test_no_import_cycles():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expected", [
    ("from ..cli import main", "sbattn.cli.main"),
    ("from ..errors import UserError", "sbattn.errors"),
    ("def f():\n    from ..cli.main import main", "sbattn.cli.main"),
    ("from . import distributed", "sbattn.engine.distributed"),
    ("import sbattn.nn.attention", "sbattn.nn.attention"),
    ("from .. import nn", "sbattn.nn"),
])
def test_the_parser_finds_relative_absolute_and_local_imports(source, expected):
    assert expected in imports_in(source, "sbattn.engine.loop", is_package=False)


def test_an_upward_import_is_caught(monkeypatch):
    real = imports_of
    monkeypatch.setitem(globals(), "imports_of",
                        lambda path: real(path) | ({"sbattn.cli.main"} if path.name == "loop.py" else set()))
    with pytest.raises(AssertionError, match="sbattn.engine.loop .*imports sbattn.cli.main"):
        test_imports_point_down()
    with pytest.raises(AssertionError, match="sbattn.cli.main"):
        test_no_import_cycles()
