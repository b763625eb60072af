"""Prometheus rules and config, Alertmanager config, runbooks and docker-compose.yml.

promtool and amtool come from ``traintel stack install`` (the pinned versions) or, failing that,
from PATH (e.g. Debian's ``prometheus`` and ``prometheus-alertmanager`` packages).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from traintel.stack import install
from traintel.stack.components import COMPONENTS

REPO = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((REPO / "prometheus/rules").glob("*.yml"))
RULE_TESTS = sorted((REPO / "prometheus/tests").glob("*.yml"))
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


#: Debian package with an older version of each tool
DEBIAN = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}


def _tool(component: str, name: str) -> str:
    found = install.binary(component, name) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: run `traintel stack install` or "
                    f"`apt-get install {DEBIAN[name]}`")
    return str(found)


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output


def _alerts() -> list[dict]:
    return [rule for path in RULE_FILES
            for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


# --- the tools ----------------------------------------------------------------------------------

def test_promtool_check_config() -> None:
    _run(_tool("prometheus", "promtool"), "check", "config", "prometheus/prometheus.yml")


def test_promtool_check_rules() -> None:
    _run(_tool("prometheus", "promtool"), "check", "rules", *map(str, RULE_FILES))


def test_promtool_unit_tests() -> None:
    _run(_tool("prometheus", "promtool"), "test", "rules", *map(str, RULE_TESTS))


def test_amtool_check_config() -> None:
    _run(_tool("alertmanager", "amtool"), "check-config", "alertmanager/alertmanager.yml")


# --- alerts are complete ------------------------------------------------------------------------

@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_summary_description_and_runbook(alert: dict) -> None:
    assert alert["labels"]["severity"] in ("critical", "warning", "info")
    annotations = alert["annotations"]
    assert annotations["summary"] and annotations["description"]
    anchor = alert["alert"].lower()
    assert annotations["runbook_url"] == f"docs/runbooks.md#{anchor}"
    headings = re.findall(r"^## (\S+)", (REPO / "docs/runbooks.md").read_text(), re.MULTILINE)
    assert alert["alert"] in headings, f"docs/runbooks.md has no section '## {alert['alert']}'"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - fires == set(), "alerts without a test in which they fire"
    assert names - quiet == set(), "alerts without a test in which they stay quiet"


# --- docker-compose.yml -------------------------------------------------------------------------

def _services() -> dict[str, dict]:
    return COMPOSE["services"]


@pytest.mark.parametrize("name", sorted(_services()))
def test_published_ports_bind_loopback_only(name: str) -> None:
    for port in _services()[name].get("ports", []):
        spec = port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
        assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec} beyond this machine"


def test_grafana_has_no_default_password_and_no_anonymous_access() -> None:
    env = _services()["grafana"]["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "false"
    example = (REPO / ".env.example").read_text()
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=\S+", example, re.MULTILINE)


def test_images_are_pinned_to_the_component_versions() -> None:
    by_repository = {c.image.split(":")[0]: c.image for c in COMPONENTS.values()}
    for name, service in _services().items():
        image = service["image"]
        repository, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"
        assert by_repository[repository] == image, \
            f"{name}: {image}, but components.py says {by_repository[repository]}"
    assert {c.image for c in COMPONENTS.values()} <= {s["image"] for s in _services().values()}


def test_long_running_services_restart_and_keep_their_data_in_named_volumes() -> None:
    volumes = set(COMPOSE["volumes"])
    for name, service in _services().items():
        if service.get("restart") == "no":  # one-shot helpers
            continue
        assert service.get("restart") == "unless-stopped", name
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith("./") or source in volumes, f"{name}: {mount}"
