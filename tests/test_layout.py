"""The house's layout: arrows one way (no import cycle, the command line above the core, `import
traintel` cheap), no module reading another's private attributes, a thin Run, and a README that
names every module."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "traintel"


def _import_graph():
    spec = importlib.util.spec_from_file_location(
        "import_graph", ROOT / "scripts" / "import_graph.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


import_graph = _import_graph()
EDGES = import_graph.graph()
#: private attributes of other libraries read on purpose, with the reason
FOREIGN_PRIVATE = {
    (
        "export/otlp.py",
        "_preferred_temporality",
    ): "the OTel SDK has no public accessor; its own PeriodicExportingMetricReader reads it",
    ("export/otlp.py", "_preferred_aggregation"): "as _preferred_temporality",
    ("export/selection.py", "_preferred_temporality"): "as in export/otlp.py",
    ("export/selection.py", "_preferred_aggregation"): "as in export/otlp.py",
}


def test_the_import_graph_has_no_cycle() -> None:
    assert len(EDGES) > 50 and sum(map(len, EDGES.values())) > 100  # it sees the whole package
    assert import_graph.cycles(EDGES) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]
    ]
    assert import_graph.cycles({"a": {"b"}, "b": set()}) == []


def test_a_lazy_import_is_an_edge_too(tmp_path: Path) -> None:
    package = tmp_path / "traintel"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from . import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
    )
    assert import_graph.cycles(import_graph.graph(tmp_path)) == [["traintel.a", "traintel.b"]]


def test_the_core_never_imports_the_command_line() -> None:
    upward = {
        (module, target)
        for module, targets in EDGES.items()
        for target in targets
        if not module.startswith(("traintel.cli", "traintel.__main__"))
        and target.startswith("traintel.cli")
    }
    assert upward == set()


def test_import_traintel_stays_cheap() -> None:
    code = (
        "import sys, traintel\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'opentelemetry', 'torch', 'rich', 'prometheus_client', 'orjson', 'psutil'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def _defined(tree: ast.AST) -> set[str]:
    """Names a module defines or assigns: functions, classes, variables, attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _private_reads(path: Path, where: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    own = _defined(tree)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in own
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            and (where, node.attr) not in FOREIGN_PRIVATE
        ):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_reads_another_modules_private_attributes() -> None:
    found = [
        read
        for path in sorted(SRC.rglob("*.py"))
        for read in _private_reads(path, path.relative_to(SRC).as_posix())
    ]
    assert found == [], "use (or add) a public name instead:\n" + "\n".join(found)


def test_the_private_read_check_finds_reads(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "class A:\n    def f(self, run):\n        self._mine = 1\n"
        "        return run._writer, other._mine, self._x\n"
    )
    assert [line.split(": ", 1)[1] for line in _private_reads(sample, "sample.py")] == [
        "run._writer"
    ]


#: the façade's size in statements (bare annotations, which declare, not counted), not lines: ruff
#: format lays out a call one argument a line, so a line count measured the formatter (300 lines
#: of the hand-wrapped code were ~208 statements)
FACADE_STATEMENTS = 210


def test_run_stays_a_thin_facade() -> None:
    tree = ast.parse((SRC / "run" / "facade.py").read_text())
    statements = sum(
        isinstance(node, ast.stmt) and not (isinstance(node, ast.AnnAssign) and node.value is None)
        for node in ast.walk(tree)
    )
    assert statements <= FACADE_STATEMENTS, (
        f"run/facade.py has {statements} statements: give the new work a part of its own"
    )


#: the layers, bottom first: a module may import its own package and the layers below it, never
#: a layer above, nor another package of its own layer. The top layer (the public face and the
#: command line) may import itself.
LAYERS: list[set[str]] = [
    {"core", "version"},
    {"record"},
    {"export", "samplers"},
    {"reports"},
    {"run"},
    {"integrations", "stack", "sync"},
    {"cli", "__init__", "__main__", "demo", "testing"},
]
#: at most this many modules at the top of src/traintel: the rest live in the layers' packages
MAX_TOP_LEVEL = 10


def _layer_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    package = parts[1] if len(parts) > 1 else "__init__"
    for depth, layer in enumerate(LAYERS):
        if package in layer:
            return depth, package
    raise AssertionError(f"{module}: add its package to LAYERS in tests/test_layout.py")


def _against_the_layers(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(edges.items()):
        depth, package = _layer_of(module)
        for target in sorted(targets):
            target_depth, target_package = _layer_of(target)
            upward = target_depth > depth
            sideways = (
                target_depth == depth and target_package != package and depth != len(LAYERS) - 1
            )
            if upward or sideways:
                found.append(f"{module} -> {target}")
    return found


def test_no_import_runs_back_up_a_layer() -> None:
    assert _against_the_layers(EDGES) == []


def test_the_layer_check_finds_an_upward_and_a_sideways_import() -> None:
    edges = {
        "traintel.core.state": {"traintel.record.format"},
        "traintel.reports.render": {"traintel.core.stats"},
        "traintel.sync.plan": {"traintel.stack.rules"},
    }
    assert _against_the_layers(edges) == [
        "traintel.core.state -> traintel.record.format",
        "traintel.sync.plan -> traintel.stack.rules",
    ]


def test_at_most_ten_modules_at_the_top() -> None:
    top = sorted(path.name for path in SRC.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"move some of these into a layer's package: {top}"
    packages = {
        path.name for path in SRC.iterdir() if path.is_dir() and (path / "__init__.py").exists()
    }
    assert packages <= set().union(*LAYERS), "add the new package to LAYERS"


def test_the_readme_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = re.search(r"^## Layout\n(.*?)^## ", readme, re.S | re.M)
    assert layout, "README.md lost its Layout section"
    rows = re.findall(r"^\| `([\w/]+(?:\.py|/))` \|", layout.group(1), re.M)
    named = set(rows)
    assert len(rows) == len(named), "a module has two rows in README.md's Layout section"
    expected = set()
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC)
        if path.name == "__init__.py":
            expected.add(
                f"{relative.parent.as_posix()}/" if relative.parent.parts else "__init__.py"
            )
        else:
            expected.add(relative.as_posix())
    assert expected - named == set(), "add these to README.md's Layout section"
    assert named - expected == set(), "README.md's Layout names modules that do not exist"


def test_every_public_call_a_user_makes_has_a_docstring() -> None:
    """What a user calls (the run, its instruments, ``traintel.testing``, the public functions)
    says what it does where an editor shows it."""
    import inspect

    import traintel
    from traintel import testing
    from traintel.run import facade, instruments

    owners: list[type] = [facade.Run, testing.Telemetry]
    owners += [
        cls
        for _, cls in inspect.getmembers(instruments, inspect.isclass)
        if cls.__module__ == instruments.__name__ and not cls.__name__.startswith("_")
    ]
    missing = [
        f"traintel.{name}"
        for name in ("init", "current_run")
        if not getattr(traintel, name).__doc__
    ]
    missing += [
        f"testing.{name}"
        for name, fn in inspect.getmembers(testing, inspect.isfunction)
        if fn.__module__ == testing.__name__ and not name.startswith("_") and not fn.__doc__
    ]
    for owner in owners:
        if not owner.__doc__:
            missing.append(owner.__qualname__)
        for name, member in vars(owner).items():
            target = member.fget if isinstance(member, property) else member
            if not name.startswith("_") and callable(target) and not target.__doc__:
                missing.append(f"{owner.__qualname__}.{name}")
    assert missing == []
