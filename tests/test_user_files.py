"""Files a user owns: what `traintel stack init` writes speaks to its reader, never of this
project's own test suite (the rule unit tests under prometheus/tests/ are the user's to run)."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from traintel.cli import main
from traintel.stack import project

#: phrases of a comment written for this project's developers rather than for the user
DEVELOPERS_ONLY = re.compile(
    r"tests? check|the tests\b|test stack|test suite|test bed|pytest|"
    r"fixture|tests/test_|stand-in",
    re.IGNORECASE,
)


def _comments(path: Path) -> list[str]:
    text = path.read_text(errors="replace")
    if path.suffix == ".json":  # dashboards: the descriptions a user reads in Grafana
        return re.findall(r'"description": "([^"]*)"', text)
    return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]


def test_no_file_init_writes_speaks_of_the_projects_own_tests(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["stack", "init", str(tmp_path / "p"), "--webhook", "https://alerts.example.com/x"]
    )
    assert result.exit_code == 0, result.output
    written = [p for p in (tmp_path / "p").rglob("*") if p.is_file() and p.name != ".env"]
    assert len(written) > 20
    found = [
        f"{p.relative_to(tmp_path / 'p')}: {c.strip()}"
        for p in written
        for c in _comments(p)
        if DEVELOPERS_ONLY.search(c)
    ]
    assert found == []


def test_the_pattern_finds_what_the_files_said_before() -> None:
    said = (
        "# Image tags are pinned and must equal src/traintel/stack/components.py (tests check "
        "this): the",
        "# native test stack builds the same versions.",
    )
    assert all(DEVELOPERS_ONLY.search(line) for line in said)
    assert project.UNIT.endswith(".service")
