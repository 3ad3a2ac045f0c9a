"""How strong the test suite is: small defects put into the code, one at a time, and whether a test fails.

    python tests/mutation.py map  TREE OUT     # run TREE's suite once under coverage: which test runs which line
    python tests/mutation.py run  TREE OUT     # each defect into a copy of TREE; the tests that run its line
    python tests/mutation.py report OUT        # the counts and the defects no test caught

`touch OUT/pause` holds a run between two defects (to time something else on the machine); removing it goes on.

`make mutate` runs all three on the working tree (not part of `make test`: it takes hours on 2 cores). TREE is a
checkout (a `git worktree` of an older commit measures the suite as it was). The defects are made mechanically
from the syntax of the modules in TARGETS, so that two suites are measured on exactly the same list: a comparison
flipped (< to <=, == to !=, in to not in), an arithmetic operator swapped (+ -, * /), a number moved (n to n + 1,
x to 2x), a boolean or a `not` inverted, `and` swapped with `or`, an `if` negated. A defect is run against the
tests that execute its line (coverage with a context per test, subprocesses included); a test whose fixture ran
the line (its setup) brings its whole file, since the fixture's result may be checked by any test there. A defect
is caught when one of them fails or they run past the time limit; `uncovered` when no test runs its line.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

TARGETS = ["sbattn/nn/*.py", "sbattn/records/integrity.py", "sbattn/train/state.py", "sbattn/train/step.py",
           "sbattn/data/augmentation.py", "sbattn/experiments/stats.py"]
EVERY = 5  # the sample: 1 defect in 5 of the 719 (144) runs in about an hour on 2 cores
SWAP_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
              ast.Pow: ast.Mult}


@dataclass
class Mutant:
    id: int
    path: str      # relative to the tree
    line: int
    end_line: int
    col: int
    end_col: int
    original: str
    replacement: str
    kind: str


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """Nodes whose mutation means nothing: docstrings, annotations, f-strings, `__all__`, TYPE_CHECKING blocks."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            skip(node.body[0])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip(node.returns)
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs,
                        node.args.vararg, node.args.kwarg]:
                if arg is not None:
                    skip(arg.annotation)
        if isinstance(node, ast.AnnAssign):
            skip(node.annotation)
        if isinstance(node, ast.JoinedStr):
            skip(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            skip(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip(node)
        if isinstance(node, ast.Raise):  # the message's numbers; the condition that raises is mutated elsewhere
            skip(node)
    return skipped


def _replacements(node: ast.AST) -> list[tuple[ast.AST, str]]:
    """(mutated copy of node, kind) for each defect this node can carry."""
    out = []
    if isinstance(node, ast.Compare) and type(node.ops[0]) in SWAP_COMPARE:
        new = _copy(node)
        new.ops[0] = SWAP_COMPARE[type(node.ops[0])]()
        out.append((new, "compare"))
    elif isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
        new = _copy(node)
        new.op = SWAP_BINOP[type(node.op)]()
        out.append((new, "arithmetic"))
    elif isinstance(node, ast.BoolOp):
        new = _copy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append((new, "boolean"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        out.append((node.operand, "unary"))
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        out.append((ast.Constant(not node.value), "boolean"))
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        out.append((ast.Constant(node.value + 1), "number"))
    elif isinstance(node, ast.Constant) and type(node.value) is float:
        out.append((ast.Constant(node.value * 2 if node.value else 1.0), "number"))
    return out


def _copy(node: ast.AST) -> ast.AST:
    return ast.parse(ast.unparse(node), mode="eval").body


def mutants_of(tree_dir: Path) -> list[Mutant]:
    found: list[Mutant] = []
    paths = sorted({p for pattern in TARGETS for p in tree_dir.glob(pattern)})
    for path in paths:
        source = path.read_text()
        tree = ast.parse(source)
        skipped = _skipped_nodes(tree)
        lines = source.splitlines(keepends=True)
        conditions = {id(n.test) for n in ast.walk(tree) if isinstance(n, (ast.If, ast.While, ast.IfExp))}
        for node in ast.walk(tree):
            if id(node) in skipped or not hasattr(node, "lineno"):
                continue
            if "no mutate" in lines[node.lineno - 1]:
                continue
            segment = ast.get_source_segment(source, node)
            if segment is None:
                continue
            candidates = [(ast.unparse(new), kind) for new, kind in _replacements(node)]
            if id(node) in conditions and not isinstance(node, (ast.Compare, ast.BoolOp, ast.UnaryOp)):
                candidates.append((f"not ({segment})", "condition"))
            for replacement, kind in candidates:
                found.append(Mutant(len(found), str(path.relative_to(tree_dir)), node.lineno, node.end_lineno,
                                    node.col_offset, node.end_col_offset, segment, f"({replacement})", kind))
    return found


def apply(source: str, m: Mutant) -> str:
    lines = source.splitlines(keepends=True)
    start = sum(len(l.encode()) for l in lines[:m.line - 1]) + m.col
    end = sum(len(l.encode()) for l in lines[:m.end_line - 1]) + m.end_col
    data = source.encode()
    assert data[start:end].decode() == m.original, (m, data[start:end])
    mutated = (data[:start] + m.replacement.encode() + data[end:]).decode()
    ast.parse(mutated)  # still Python
    return mutated


# ------------------------------------------------------------------------------------------------ the map


def coverage_map(tree_dir: Path, out: Path) -> None:
    """Run the suite of tree_dir once under coverage; write OUT/map.json: for each target line, the tests that
    executed it (node ids; a test's setup is marked so), and OUT/durations.json."""
    out.mkdir(parents=True, exist_ok=True)
    data = out / "coverage"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    include = ",".join(str(tree_dir / t) for t in TARGETS)
    rc = out / "coveragerc"
    # The static context is the test that started a subprocess (pytest sets PYTEST_CURRENT_TEST in the
    # environment the subprocess inherits); in the pytest process itself pytest-cov sets one per test phase.
    rc.write_text(f"[run]\ninclude = {include}\nparallel = true\ndata_file = {data}/.coverage\n"
                  "patch = subprocess\ncontext = ${PYTEST_CURRENT_TEST-}\n")
    env = {**os.environ, "PYTHONPATH": str(tree_dir), "COVERAGE_RCFILE": str(rc)}
    started = time.time()
    # pyproject's addopts (-n 2 --dist worksteal) off: with a --dist mode set, even under -n 0, pytest-cov records
    # no per-test context; the two workers here are asked for plainly, and keep them.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-n", "2",
                           "--cov",
                           f"--cov-config={rc}", "--cov-context=test", "--cov-report=", "--durations=0",
                           f"--junitxml={out / 'junit.xml'}", "tests"], cwd=tree_dir, env=env)
    print(f"map: the suite ran in {time.time() - started:.0f} s, exit status {proc.returncode}")
    subprocess.run([sys.executable, "-m", "coverage", "combine", "--append", "--keep", f"--rcfile={rc}", str(data)],
                   cwd=tree_dir, env=env, check=True)
    write_map(data / ".coverage", tree_dir, out / "map.json")
    (out / "durations.json").write_text(json.dumps(_durations(out / "junit.xml")))


IMPORT = "#import"  # a line that ran outside any test: at import, while pytest collected the tests


def write_map(data: Path, tree_dir: Path, to: Path) -> None:
    lines: dict[str, dict[int, set[str]]] = {}
    with sqlite3.connect(data) as db:
        files = dict(db.execute("select id, path from file"))
        contexts = dict(db.execute("select id, context from context"))
        from coverage.numbits import numbits_to_nums
        for file_id, context_id, numbits in db.execute("select file_id, context_id, numbits from line_bits"):
            test = _node_id(contexts[context_id]) or IMPORT
            rel = str(Path(files[file_id]).resolve().relative_to(tree_dir.resolve()))
            for n in numbits_to_nums(numbits):
                lines.setdefault(rel, {}).setdefault(n, set()).add(test)
    to.write_text(json.dumps({f: {str(n): sorted(t) for n, t in ls.items()} for f, ls in lines.items()}))


def _node_id(context: str) -> str | None:
    """'tests/test_x.py::test_y[a]|run' (pytest-cov) or 'tests/test_x.py::test_y[a] (call)' (a subprocess's
    PYTEST_CURRENT_TEST) as the node id, with '#setup' where the line ran in a fixture's setup."""
    if not context:
        return None
    for sep, setup in (("|", "|setup"), (" (", " (setup)")):
        if sep in context:
            node = context.rpartition(sep)[0]
            return node + ("#setup" if context.endswith(setup) else "")
    return context


def _durations(junit: Path) -> dict[str, float]:
    import xml.etree.ElementTree as ET
    result = {}
    for case in ET.parse(junit).iter("testcase"):
        result[f"{case.get('classname')}::{case.get('name')}"] = float(case.get("time", 0))
    return result


# ------------------------------------------------------------------------------------------------ the run


def tests_for(m: Mutant, lines: dict[str, dict[str, list[str]]]) -> list[str]:
    selected: set[str] = set()
    here = lines.get(m.path, {})
    ran = {t for n in range(m.line, m.end_line + 1) for t in here.get(str(n), [])}
    if ran == {IMPORT}:  # a module-level value: every test that runs this module's code
        ran = {t for tests in here.values() for t in tests}
    for test in ran - {IMPORT}:
        node, _, setup = test.partition("#")
        selected.add(node.split("::")[0] if setup else node)
    files = {t for t in selected if "::" not in t}
    return sorted(t for t in selected if t in files or t.split("::")[0] not in files)


def run_mutants(tree_dir: Path, out: Path, limit_s: float, every: int) -> None:
    lines = json.loads((out / "map.json").read_text())
    mutants = mutants_of(tree_dir)[::every]
    results_path = out / "results.jsonl"
    done = {json.loads(l)["id"] for l in results_path.read_text().splitlines()} if results_path.exists() else set()
    with tempfile.TemporaryDirectory(prefix="sbattn-mutant-") as tmp:
        work = Path(tmp) / "tree"
        shutil.copytree(tree_dir, work, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "results",
                                                                         "__pycache__", "*.egg-info"))
        env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
        for m in mutants:
            if m.id in done:
                continue
            while (out / "pause").exists():  # held between defects while something is timed beside the run
                time.sleep(5)
            tests = tests_for(m, lines)
            started = time.time()
            if not tests:
                status = "uncovered"
            else:
                target = work / m.path
                original = target.read_text()
                target.write_text(apply(original, m))
                try:
                    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                           "-o", "addopts=", *tests], cwd=work, env=env, capture_output=True, text=True,
                                          timeout=limit_s)
                    status = {0: "survived", 5: "uncovered"}.get(proc.returncode, "caught")
                except subprocess.TimeoutExpired:
                    status = "caught (time limit)"
                finally:
                    target.write_text(original)
            record = {**asdict(m), "status": status, "tests": len(tests), "seconds": round(time.time() - started, 1)}
            with results_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{m.id:4d} {status:20s} {m.path}:{m.line} {m.original!r} -> {m.replacement!r} "
                  f"({len(tests)} tests, {record['seconds']} s)", flush=True)


def report(out: Path) -> str:
    results = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    caught = sum(r["status"].startswith("caught") for r in results)
    uncovered = [r for r in results if r["status"] == "uncovered"]
    survived = [r for r in results if r["status"] == "survived"]
    lines = [f"{len(results)} defects: {caught} caught ({100 * caught / max(1, len(results)):.1f}%), "
             f"{len(survived)} survived, {len(uncovered)} on lines no test runs"]
    for r in survived + uncovered:
        lines.append(f"- {r['status']}: {r['path']}:{r['line']} `{r['original']}` -> `{r['replacement']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("list", "map", "remap", "run", "report"))
    p.add_argument("tree", type=Path, help="the checkout whose suite is measured (report: the output folder)")
    p.add_argument("out", type=Path, nargs="?", help="where the map and the results go")
    p.add_argument("--limit", type=float, default=600, help="seconds per defect before it counts as caught")
    p.add_argument("--every", type=int, default=EVERY, help=f"every N-th defect in the list (default: {EVERY}: a "
                                                             "fixed sample, the same for two trees of one code)")
    args = p.parse_args(argv)
    tree = args.tree.resolve()
    if args.step == "list":
        for m in mutants_of(tree):
            print(f"{m.id:4d} {m.kind:10s} {m.path}:{m.line} {m.original!r} -> {m.replacement!r}")
    elif args.step == "map":
        coverage_map(tree, args.out.resolve())
    elif args.step == "remap":  # the map again from the coverage data of `map`, without running the suite
        write_map(args.out.resolve() / "coverage" / ".coverage", tree, args.out.resolve() / "map.json")
    elif args.step == "run":
        run_mutants(tree, args.out.resolve(), args.limit, args.every)
    else:
        print(report(tree))
    return 0


if __name__ == "__main__":
    sys.exit(main())
