"""The registry of environment variables (traintel.core.env): the only reader of the environment, every
variable the code or the scripts name is in it, and docs/configuration.md is rendered from it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from traintel.core import env
from traintel.run import settings

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "traintel"
#: reading the environment: these attributes of ``os``, or importing them from it
ENVIRON = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p != SRC / "core" / "env.py")


def _environment_reads(path: Path) -> list[str]:
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ENVIRON
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            found.append(f"{where}:{node.lineno}: os.{node.attr}")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and {a.name for a in node.names} & ENVIRON
        ):
            found.append(f"{where}:{node.lineno}: from os import ...")
        elif (
            isinstance(node, ast.keyword)
            and node.arg == "envvar"
            and isinstance(node.value, ast.Constant)
        ):
            found.append(f"{where}:{node.lineno}: envvar={node.value.value!r}")
    return sorted(found, key=lambda read: int(read.split(":")[1]))


def test_only_the_registry_reads_the_environment() -> None:
    stray = [read for path in _sources() for read in _environment_reads(path)]
    assert stray == [], "read variables through traintel.core.env (add them there):\n" + "\n".join(
        stray
    )


def test_the_stray_read_check_finds_reads(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom os import getenv\nos.environ.get('X')\noption(envvar='TRAINTEL_X')\n"
    )
    assert [line.split(": ", 1)[1] for line in _environment_reads(sample)] == [
        "from os import ...",
        "os.environ",
        "envvar='TRAINTEL_X'",
    ]


def test_every_traintel_variable_the_code_or_scripts_name_is_registered() -> None:
    named = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named |= set(re.findall(r"\bTRAINTEL_[A-Z0-9_]+\b", node.value))
    for path in [*ROOT.glob("scripts/*"), ROOT / "Makefile"]:
        named |= set(re.findall(r"\bTRAINTEL_[A-Z0-9_]+\b", path.read_text()))
    assert named, "the scan found nothing: is it looking in the right place?"
    assert named - set(env.BY_NAME) == set()


def test_names_are_unique_and_documented() -> None:
    assert len(env.BY_NAME) == len(env.VARIABLES)
    for variable in env.VARIABLES:
        assert variable.meaning.endswith("."), variable.name
        assert variable.group in env.GROUPS


def test_configuration_doc_is_generated_from_the_registry() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == settings.render_markdown(), (
        "run `traintel docs configuration > docs/configuration.md`"
    )
    for variable in env.VARIABLES:
        assert f"`{variable.name}`" in committed


def test_values_are_read_and_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINTEL_HTTP_PORT", "9464")
    monkeypatch.setenv("TRAINTEL_SAMPLE_INTERVAL", "0.5")
    monkeypatch.setenv("OTEL_SDK_DISABLED", " TRUE ")
    monkeypatch.setenv("TRAINTEL_PROJECT", "")
    assert env.TRAINTEL_HTTP_PORT.integer() == 9464
    assert env.TRAINTEL_SAMPLE_INTERVAL.real() == 0.5
    assert env.OTEL_SDK_DISABLED.is_true()
    assert env.TRAINTEL_PROJECT.get() is None  # empty is unset
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert env.CUDA_VISIBLE_DEVICES.raw() == ""  # ... unless empty means something: no GPU
    monkeypatch.setenv("TRAINTEL_HTTP_PORT", "ninety")
    with pytest.raises(ValueError, match="TRAINTEL_HTTP_PORT='ninety' must be an integer"):
        env.TRAINTEL_HTTP_PORT.integer()
