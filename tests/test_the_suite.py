"""The suite's own rules: every test asserts something (directly, through a helper it calls, or
with pytest.raises), so that no test can pass by merely running."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _functions() -> dict[str, dict[str, ast.FunctionDef]]:
    """Every function of every test module and helper module, by file and name."""
    found: dict[str, dict[str, ast.FunctionDef]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        found[str(path.relative_to(TESTS))] = {
            node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
        }
    return found


def _checks(node: ast.AST) -> bool:
    """An assert, a raise of AssertionError, or pytest.raises/warns/fail in the function."""
    for inner in ast.walk(node):
        if isinstance(inner, ast.Assert):
            return True
        if isinstance(inner, ast.Raise) and "AssertionError" in ast.unparse(inner):
            return True
        if isinstance(inner, ast.Call) and ast.unparse(inner.func) in (
            "pytest.raises",
            "pytest.warns",
            "pytest.fail",
        ):
            return True
    return False


def _called(node: ast.AST) -> set[str]:
    return {
        inner.func.id
        for inner in ast.walk(node)
        if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name)
    }


def _asserting(functions: dict[str, dict[str, ast.FunctionDef]]) -> set[str]:
    """``module::name`` of the functions that assert, directly or through helpers they call. A
    call resolves to the caller's own module's function of that name, else to that name in any
    test or helper module (helpers live in both): two modules' ``_run`` never stand for each
    other."""

    def key(module: str, name: str) -> str:
        return f"{module}::{name}"

    asserting = {
        key(module, name)
        for module, names in functions.items()
        for name, node in names.items()
        if _checks(node)
    }

    def resolves(module: str, name: str) -> bool:
        if name in functions[module]:
            return key(module, name) in asserting
        return any(key(other, name) in asserting for other in functions if name in functions[other])

    changed = True
    while changed:
        grown = {
            key(module, name)
            for module, names in functions.items()
            for name, node in names.items()
            if any(resolves(module, called) for called in _called(node))
        }
        changed = not grown <= asserting
        asserting |= grown
    return asserting


def _tests() -> dict[str, list[str]]:
    """The tests pytest collects, by file: module-level ``test_*`` functions and those of
    ``Test*`` classes (a framework's own ``test_step`` hook in a helper class is none)."""
    found: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        nodes = [
            *tree.body,
            *(
                n
                for c in tree.body
                if isinstance(c, ast.ClassDef) and c.name.startswith("Test")
                for n in c.body
            ),
        ]
        found[str(path.relative_to(TESTS))] = [
            n.name for n in nodes if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
        ]
    return found


def test_every_test_asserts_something() -> None:
    asserting = _asserting(_functions())
    silent = [
        f"{module}::{name}"
        for module, names in _tests().items()
        for name in names
        if f"{module}::{name}" not in asserting
    ]
    assert sum(len(names) for names in _tests().values()) > 300
    assert silent == [], "these tests can pass without checking anything"


def test_the_check_spots_a_test_that_only_runs(tmp_path: Path) -> None:
    module = ast.parse(
        "def helper():\n    assert True\n\ndef test_runs():\n    print(1)\n\n"
        "def test_calls():\n    helper()\n"
    )
    functions = {
        "m.py": {node.name: node for node in ast.walk(module) if isinstance(node, ast.FunctionDef)}
    }
    assert _asserting(functions) == {"m.py::helper", "m.py::test_calls"}
    other = ast.parse("def helper():\n    print(2)\n\ndef test_other():\n    helper()\n")
    functions["n.py"] = {
        node.name: node for node in ast.walk(other) if isinstance(node, ast.FunctionDef)
    }
    assert "n.py::test_other" not in _asserting(functions)  # its own helper does not assert
