"""The package's layers import one way: nothing imports the command line from below it, nothing imports a layer
above its own, and no module imports itself through a cycle. Function-local imports count too."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sbattn"

# Rank of each layer: a module may import its own layer's modules (within one subpackage) and lower ranks only.
LAYERS = {
    "sbattn.errors": -1,  # the error contract, below the rest of the foundation: files.py raises its errors
    "sbattn.version": 0, "sbattn.files": 0, "sbattn.system": 0, "sbattn.console": 0,
    "sbattn.nn": 1,
    "sbattn.models": 2, "sbattn.data": 2, "sbattn.optim": 2,
    "sbattn.config": 3,
    "sbattn.records": 4,
    "sbattn.train": 5, "sbattn.inference": 5,
    "sbattn.experiments": 6,
    "sbattn.cli": 7,
    "sbattn.__main__": 8,
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
    ("from . import distributed", "sbattn.train.distributed"),
    ("import sbattn.nn.attention", "sbattn.nn.attention"),
    ("from .. import nn", "sbattn.nn"),
])
def test_the_parser_finds_relative_absolute_and_local_imports(source, expected):
    assert expected in imports_in(source, "sbattn.train.loop", is_package=False)


def test_an_upward_import_is_caught(monkeypatch):
    real = imports_of
    monkeypatch.setitem(globals(), "imports_of",
                        lambda path: real(path) | ({"sbattn.cli.main"} if path.name == "loop.py" else set()))
    with pytest.raises(AssertionError, match="sbattn.train.loop .*imports sbattn.cli.main"):
        test_imports_point_down()
    with pytest.raises(AssertionError, match="sbattn.cli.main"):
        test_no_import_cycles()


MAX_MODULE_LINES = 400  # a cohesive module (the recipe, torchrun) stays whole rather than split
MAX_FUNCTION_LINES = 80
MAX_SIBLINGS = 8  # what one module of a subpackage may import of its own subpackage: orchestration stays readable


def sizes() -> tuple[dict[str, int], dict[str, int]]:
    """Lines of each module, and of each function and method (by module:qualified name)."""
    modules, functions = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name = module_name(path)
        modules[name] = len(source.splitlines())

        def visit(node, prefix=""):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qualified = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        functions[f"{name}:{qualified}"] = child.end_lineno - child.lineno + 1
                    visit(child, qualified + ".")
        visit(ast.parse(source))
    return modules, functions


def test_modules_and_functions_fit_on_a_screen_or_two():
    modules, functions = sizes()
    long_modules = {m: n for m, n in modules.items() if n > MAX_MODULE_LINES}
    long_functions = {f: n for f, n in functions.items() if n > MAX_FUNCTION_LINES}
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_no_module_imports_more_than_a_few_of_its_siblings():
    crowded = {}
    for module, targets in graph().items():
        package = module.rsplit(".", 1)[0]
        if package == "sbattn" or module.endswith("__init__") or (PACKAGE.parent / module.replace(".", "/")).is_dir():
            continue  # top-level modules, and each subpackage's face, which re-exports
        siblings = {t for t in targets if t.rsplit(".", 1)[0] == package}
        if len(siblings) > MAX_SIBLINGS:
            crowded[module] = sorted(siblings)
    assert not crowded, f"modules importing more than {MAX_SIBLINGS} of their siblings: {crowded}"


def test_a_crowded_module_is_caught(monkeypatch):
    real = imports_of
    extra = {f"sbattn.train.{m}" for m in ("distributed", "epoch", "evaluation", "optimizer", "precision", "run",
                                           "signals", "start", "state")}
    monkeypatch.setitem(globals(), "imports_of", lambda path: real(path) | (extra if path.name == "loop.py" else set()))
    with pytest.raises(AssertionError, match="sbattn.train.loop"):
        test_no_module_imports_more_than_a_few_of_its_siblings()


def test_only_the_command_line_knows_argparse():
    """The CLI turns argparse's namespace into the objects the library takes (a TrainConfig, a suite's options);
    nothing below it parses arguments or takes a Namespace."""
    below = [path.relative_to(PACKAGE.parent) for path in sorted(PACKAGE.rglob("*.py"))
             if "cli" not in path.relative_to(PACKAGE).parts[:1] and path.name != "__main__.py"
             and any(isinstance(node, (ast.Import, ast.ImportFrom)) and "argparse" in _imported_names(node)
                     for node in ast.walk(ast.parse(path.read_text())))]
    assert not below, f"argparse imported below the command line: {below}"


def _imported_names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    assert isinstance(node, ast.ImportFrom)
    return {(node.module or "").split(".")[0]}
