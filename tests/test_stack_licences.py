"""The licence rule of the test bed: no AGPL module (Loki, Tempo, Grafana) is ever downloaded or
built by the project's own files, and the native stack runs those programs only from binaries the
user supplies, saying what it skips and how to get it otherwise."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from conftest import traintel_cli
from traintel.stack import install, native
from traintel.stack.components import COMPONENTS

REPO = Path(__file__).resolve().parents[1]

#: A Go module path of Loki, Tempo or Grafana (any major version or package below it), but not
#: Grafana's Apache-2.0 repositories that merely start alike (grafana-foundation-sdk, ...).
AGPL_MODULE = re.compile(r"github\.com/grafana/(loki|tempo|grafana)(?![\w.-])")

#: Everything that downloads or builds: the installer, the Go wrapper modules, the collector's
#: builder manifest, the sink's config, the npm tool manifests, the Makefile, scripts and CI.
BUILD_FILES = sorted(
    {
        p
        for pattern in (
            "src/traintel/stack/**/*.py",
            "stack/**/*",
            "tools/**/*",
            "scripts/*",
            ".ci/*",
            "Makefile",
            "pyproject.toml",
            "otel-collector/builder-config.yaml",
        )
        for p in REPO.glob(pattern)
        if p.is_file() and "node_modules" not in p.parts
    }
)

OPTIONAL = ("loki", "tempo", "grafana")


def test_the_pattern_tells_agpl_modules_from_their_apache_neighbours() -> None:
    assert AGPL_MODULE.search("require github.com/grafana/loki/v3 v3.7.6")
    assert AGPL_MODULE.search("go install github.com/grafana/tempo/cmd/tempo@v3.0.3")
    assert AGPL_MODULE.search('"github.com/grafana/grafana"')
    assert not AGPL_MODULE.search("github.com/grafana/grafana-foundation-sdk/go v0.0.22")
    assert not AGPL_MODULE.search("github.com/grafana/regexp v0.0.0-2024")


@pytest.mark.parametrize("path", BUILD_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_build_file_names_an_agpl_module(path: Path) -> None:
    text = path.read_text(errors="replace")
    found = sorted({m.group(0) for m in AGPL_MODULE.finditer(text)})
    assert not found, f"{path.relative_to(REPO)} would download or build {found}"


def test_the_installer_builds_none_of_loki_tempo_grafana() -> None:
    assert len(BUILD_FILES) > 10 and any(p.name == "go.sum" for p in BUILD_FILES)
    for name in OPTIONAL:
        component = COMPONENTS[name]
        assert component.method == "none" and not component.packages and not component.module
        assert "AGPL" in component.unavailable and component.bin_env in component.unavailable
    built = [c for c in COMPONENTS.values() if c.method != "none"]
    assert built and not [
        c.name for c in built if AGPL_MODULE.search(" ".join([*c.packages, c.module, c.wrapper]))
    ]


# --- binaries the user supplies --------------------------------------------------------------------


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A cache of our own, no TRAINTEL_*_BIN and a PATH without loki/tempo/grafana."""
    monkeypatch.setenv("TRAINTEL_CACHE", str(tmp_path / "cache"))
    for name in OPTIONAL:
        monkeypatch.delenv(COMPONENTS[name].bin_env, raising=False)
    monkeypatch.setenv(
        "PATH",
        os.pathsep.join(
            d
            for d in os.environ["PATH"].split(os.pathsep)
            if not any((Path(d) / n).exists() for n in OPTIONAL)
        ),
    )
    return tmp_path


def _fake(path: Path, output: str) -> Path:
    # A stand-in: no real Loki can be had here (AGPL); it answers `--version` like Loki 3.7.6.
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_without_binaries_each_says_what_is_missing_and_how_to_get_it(bare) -> None:
    for name in OPTIONAL:
        reason = install.missing_reason(name)
        assert reason and COMPONENTS[name].bin_env in reason and "compose" in reason
        assert "AGPL" in reason
    lines: list[str] = []
    stack = native.NativeStack(bare / "run", ports=native.free_ports())
    stack.up(names=OPTIONAL, say=lines.append)
    assert sorted(stack.unavailable) == sorted(OPTIONAL)
    assert [line.split(":")[0] for line in lines] == list(OPTIONAL)
    assert all("skipped" in line and "TRAINTEL_" in line for line in lines)
    assert not [n for n in OPTIONAL if stack.pid(n)]


def test_a_binary_named_by_its_variable_is_used_and_its_version_recorded(bare, monkeypatch):
    loki = _fake(bare / "loki-linux-amd64", "loki, version 3.7.6 (branch: HEAD, revision: x)")
    monkeypatch.setenv("TRAINTEL_LOKI_BIN", str(loki))
    assert install.binary("loki") == loki and install.missing_reason("loki") is None
    entry = install.install(["loki"], say=lambda _: None)["loki"]
    assert (entry["ok"], entry["source"], entry["version"], entry["path"]) == (
        True,
        "user",
        "3.7.6",
        str(loki),
    )
    argv, _, _ = native.NativeStack(bare / "run").render("loki")
    assert argv[0] == str(loki)


def test_a_binary_on_path_is_found_and_a_bad_variable_is_named(bare, monkeypatch):
    bindir = bare / "bin"
    bindir.mkdir()
    _fake(bindir / "tempo", "tempo, version 3.0.2 (branch: HEAD)")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert install.binary("tempo") == bindir / "tempo"
    entry = install.install(["tempo"], say=lambda _: None)["tempo"]
    assert entry["ok"] and entry["version"] == "3.0.2"  # the skew is recorded, not hidden
    monkeypatch.setenv("TRAINTEL_TEMPO_BIN", str(bare / "missing"))
    reason = install.missing_reason("tempo")
    assert reason and f"TRAINTEL_TEMPO_BIN={bare / 'missing'} is not an executable" in reason


def test_stack_status_lists_the_skipped_programs_with_their_reasons(bare) -> None:
    result = traintel_cli("stack", "status", "--run-dir", str(bare / "run"), timeout=60)
    assert result.returncode == 0, result.stderr
    for name in OPTIONAL:
        line = next(line for line in result.stdout.splitlines() if line.startswith(name))
        assert COMPONENTS[name].bin_env in line, line


def test_grafana_is_never_started_with_a_default_password(bare, monkeypatch) -> None:
    grafana = _fake(bare / "grafana", "grafana version 13.2.0")
    monkeypatch.setenv("TRAINTEL_GRAFANA_BIN", str(grafana))
    monkeypatch.delenv("GRAFANA_ADMIN_PASSWORD", raising=False)
    stack = native.NativeStack(bare / "run", ports=native.free_ports())
    lines: list[str] = []
    stack.up(names=("grafana",), say=lines.append)
    assert "GRAFANA_ADMIN_PASSWORD" in stack.unavailable["grafana"]
    monkeypatch.setenv("GRAFANA_ADMIN_PASSWORD", "s3cret-from-env")
    argv, env, _ = stack.render("grafana")
    assert argv[:2] == [str(grafana), "server"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret-from-env"
    assert env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    provisioned = (bare / "run/grafana/provisioning/datasources/datasources.yaml").read_text()
    assert f"http://127.0.0.1:{stack.ports['prometheus']['web']}" in provisioned
    dashboards = (bare / "run/grafana/provisioning/dashboards/dashboards.yaml").read_text()
    assert str(REPO / "grafana/dashboards") in dashboards
