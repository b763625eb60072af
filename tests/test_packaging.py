"""The wheel: it carries the stack's files (equal to the repository's), every package under src/,
and `traintel stack init` writes a compose project from them; extras that are missing say which
`pip install 'traintel[...]'` brings them; `python -m traintel` runs the command line."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from traintel.cli import main
from traintel.core import extras
from traintel.samplers import gpu
from traintel.stack import project
from traintel.stack.components import COMPONENTS
from wheel_build import build_wheel

REPO = Path(__file__).resolve().parents[1]
#: the repository's top-level stack files, as git tracks them: every one must be in the wheel
STACK_PATHS = (
    "docker-compose.yml",
    ".env.example",
    "otel-collector",
    "prometheus",
    "alertmanager",
    "loki",
    "tempo",
    "grafana",
    "deploy/systemd",
    "deploy/helm",
    "stack/sink",
    "stack/go/prometheus",
    "tools/logql",
)
BUNDLE = "traintel/stack/bundle/"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def tracked(paths: tuple[str, ...]) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--", *paths], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return sorted(p for p in listed if (REPO / p).is_file() and not (REPO / p).is_symlink())


def test_the_wheel_carries_every_stack_file_equal_to_the_repositorys(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        packed = {
            name[len(BUNDLE) :]: archive.read(name)
            for name in archive.namelist()
            if name.startswith(BUNDLE) and not name.endswith("/")
        }
    expected = tracked(STACK_PATHS)
    assert len(expected) > 25
    assert sorted(packed) == expected
    different = [rel for rel in expected if packed[rel] != (REPO / rel).read_bytes()]
    assert different == []
    # what `traintel stack install` reads is among them
    inputs = {rel for c in COMPONENTS.values() for rel in (*c.inputs, c.manifest) if rel}
    assert inputs <= set(packed)
    assert ".env" not in packed


def test_the_wheel_has_every_package_under_src(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    modules = sorted(str(p.relative_to(REPO / "src")) for p in (REPO / "src").rglob("*.py"))
    assert [m for m in modules if m not in names] == []
    assert "traintel/py.typed" in names


def test_the_wheel_carries_the_live_page_and_its_uplot_with_its_licence(wheel: Path) -> None:
    """The page works offline: its files, the vendored uPlot and uPlot's licence are in the
    wheel, equal to the repository's."""
    page = REPO / "src/traintel/export/page"
    with zipfile.ZipFile(wheel) as archive:
        for name in (
            "index.html",
            "page.js",
            "uPlot.iife.min.js",
            "uPlot.min.css",
            "uPlot.LICENSE",
        ):
            assert archive.read(f"traintel/export/page/{name}") == (page / name).read_bytes(), name


def test_pyproject_lists_every_package() -> None:
    """setuptools' `packages` is explicit (the bundle is mapped from the top level): a new
    subpackage must be added there."""
    configured = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        str(p.parent.relative_to(REPO / "src")).replace("/", ".")
        for p in (REPO / "src").rglob("__init__.py")
    }
    assert found <= configured


def test_init_writes_a_compose_project_with_a_generated_password(tmp_path: Path) -> None:
    target = tmp_path / "stack"
    result = CliRunner().invoke(main, ["stack", "init", str(target)])
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == sorted([*project.project_files(), project.UNIT, ".env", ".gitignore"])
    assert ".env" in (target / ".gitignore").read_text().splitlines()
    for rel in project.project_files():
        assert (target / rel).read_bytes() == (project.root() / rel).read_bytes()
    env_file = target / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    password = next(
        line.split("=", 1)[1]
        for line in env_file.read_text().splitlines()
        if line.startswith("GRAFANA_ADMIN_PASSWORD=")
    )
    assert len(password) >= 20 and password in result.output
    assert result.output.count(password) == 1
    assert f"cd {target.resolve()} && docker compose up -d" in result.output
    unit = (target / project.UNIT).read_text()
    assert (
        f"ExecStart={sys.executable} -m traintel stack up --foreground --configs "
        f"{target.resolve()} " in unit
    )
    assert f"WorkingDirectory={target.resolve()}\n" in unit
    assert f"EnvironmentFile=-{target.resolve()}/.env\n" in unit  # Grafana's password too

    again = CliRunner().invoke(main, ["stack", "init", str(target)])
    assert again.exit_code == 0 and password not in again.output
    assert "kept the existing" in again.output
    assert env_file.read_text().count(password) == 1

    second = CliRunner().invoke(main, ["stack", "init", str(tmp_path / "other")])
    assert password not in (tmp_path / "other" / ".env").read_text()  # a new one each time
    assert second.exit_code == 0


def test_init_never_overwrites_an_edited_config_unless_forced(tmp_path: Path) -> None:
    assert CliRunner().invoke(main, ["stack", "init", str(tmp_path)]).exit_code == 0
    edited = tmp_path / "alertmanager/alertmanager.yml"
    edited.write_text(edited.read_text() + "# my receiver\n")
    refused = CliRunner().invoke(main, ["stack", "init", str(tmp_path)])
    assert refused.exit_code == 1
    assert "alertmanager/alertmanager.yml" in refused.output and "--force" in refused.output
    assert edited.read_text().endswith("# my receiver\n")
    forced = CliRunner().invoke(main, ["stack", "init", "--force", str(tmp_path)])
    assert forced.exit_code == 0
    assert edited.read_bytes() == (project.root() / "alertmanager/alertmanager.yml").read_bytes()


def test_the_example_env_file_has_no_password() -> None:
    example = (project.root() / ".env.example").read_text()
    assert "GRAFANA_ADMIN_PASSWORD=\n" in example


def test_python_dash_m_traintel_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "traintel", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: traintel" in done.stdout and "stack" in done.stdout


def _without(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """The command line in a Python where ``module`` cannot be imported (as if not installed)."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from traintel.cli import main\n"
        f"main({list(argv)!r}, prog_name='traintel')"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TRAINTEL_DIR": "/nonexistent"},
    )


def test_the_demo_without_torch_names_the_extra() -> None:
    done = _without("torch", "demo", "--duration", "0")
    assert done.returncode == 1
    assert (
        "traintel demo needs PyTorch (no module 'torch'): pip install 'traintel[torch]'"
        in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_the_integrations_without_their_framework_name_the_extra() -> None:
    for module, framework in (("huggingface", "transformers"), ("lightning", "lightning")):
        code = (
            f"import sys; sys.modules[{framework!r}] = None\nimport traintel.integrations.{module}"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1
        assert "pip install 'traintel[integrations]'" in done.stderr, done.stderr


def test_an_extra_that_is_there_is_not_reported() -> None:
    assert extras.missing("plots") is None  # the dev extra installs every other extra
    assert extras.missing("gpu", "no_such_module_here") == "no_such_module_here"
    with pytest.raises(extras.MissingExtra) as raised:
        extras.require("a feature", "grpc", "no_such_module_here")
    assert isinstance(raised.value, ImportError)
    assert str(raised.value) == (
        "a feature needs the OTLP/gRPC exporter "
        "(opentelemetry-exporter-otlp-proto-grpc) (no module "
        "'no_such_module_here'): pip install 'traintel[grpc]'"
    )


def test_gpu_metrics_without_nvidia_ml_py_on_a_driver_machine_say_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(gpu, "driver_present", lambda: True)
    monkeypatch.setattr(gpu, "_hinted", [])
    with caplog.at_level(logging.INFO, logger="traintel.samplers"):
        assert gpu.gpu_sampler(local_rank=None) is None
        assert gpu.gpu_sampler(local_rank=None) is None
    hints = [r for r in caplog.records if "traintel[gpu]" in r.getMessage()]
    assert len(hints) == 1 and hints[0].levelno == logging.WARNING
    assert hints[0].getMessage() == (
        "traintel: the GPU sampler needs nvidia-ml-py (no module "
        "'pynvml'): pip install 'traintel[gpu]'"
    )


def test_gpu_metrics_without_a_driver_stay_quiet(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(gpu, "driver_present", lambda: False)
    with caplog.at_level(logging.INFO, logger="traintel.samplers"):
        assert gpu.gpu_sampler(local_rank=None) is None
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "traintel[gpu]" not in caplog.text
