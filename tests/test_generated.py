"""`make generate` is the one way generated files are made (scripts/generate.py), and none of them
is stale: a change to the catalog, the rule config, the dashboards or the settings shows up in its
files in the same commit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generate():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "scripts" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _generate()


def test_every_generated_file_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check"]) == 0, capsys.readouterr().out


def test_the_check_names_a_stale_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from traintel.core import catalog

    monkeypatch.setattr(catalog, "render_markdown", lambda: "# a catalog edited by hand\n")
    assert generate.main(["--check"]) == 1
    assert "docs/metrics.md" in capsys.readouterr().out
    assert (ROOT / "docs" / "metrics.md").read_text() != "# a catalog edited by hand\n"


def test_it_covers_every_file_that_says_it_is_generated() -> None:
    said = {
        path.relative_to(ROOT).as_posix()
        for pattern in ("docs/*.md", "prometheus/rules/*.yml")
        for path in ROOT.glob(pattern)
        if "GENERATED" in path.read_text()[:600] or "do not edit" in path.read_text()[:600]
    }
    made = {path.relative_to(ROOT).as_posix() for path in generate.outputs()}
    assert said <= made, f"generated but not made by scripts/generate.py: {said - made}"
