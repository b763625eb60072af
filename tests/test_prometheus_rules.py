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

from stack_fixture import RULE_FILES, committed_rules
from traintel.stack import install, rules
from traintel.stack.components import COMPONENTS

REPO = Path(__file__).resolve().parents[1]
RULE_TESTS = sorted((REPO / "prometheus/tests").glob("*.yml"))
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


#: Debian package with an older version of each tool
DEBIAN = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}


def _tool(component: str, name: str) -> str:
    found = install.binary(component, name) or shutil.which(name)
    if found is None:
        pytest.skip(
            f"{name} not found: run `traintel stack install` or `apt-get install {DEBIAN[name]}`"
        )
    return str(found)


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output


def _alerts() -> list[dict]:
    return [rule for rule in committed_rules() if "alert" in rule]


# --- the tools ----------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    _run(_tool("prometheus", "promtool"), "check", "config", "prometheus/prometheus.yml")


def test_promtool_check_rules() -> None:
    _run(_tool("prometheus", "promtool"), "check", "rules", *map(str, RULE_FILES))


def test_promtool_unit_tests() -> None:
    _run(_tool("prometheus", "promtool"), "test", "rules", *map(str, RULE_TESTS))


def test_promtool_lints_the_rules() -> None:
    """cloudflare/pint cannot be had here (the Go module proxy refuses github.com/cloudflare/pint,
    403), so the linter is promtool's own: every check, any finding fails."""
    promtool = _tool("prometheus", "promtool")
    if (
        "--lint"
        not in subprocess.run(
            [promtool, "check", "rules", "--help"], capture_output=True, text=True
        ).stdout
    ):
        pytest.skip(f"{promtool} has no --lint (Debian's 2.42 fallback)")
    _run(promtool, "check", "rules", "--lint=all", "--lint-fatal", *map(str, RULE_FILES))


def test_amtool_check_config() -> None:
    _run(_tool("alertmanager", "amtool"), "check-config", "alertmanager/alertmanager.yml")


# --- alerts are complete ------------------------------------------------------------------------


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_summary_description_and_runbook(alert: dict) -> None:
    assert alert["labels"]["severity"] in ("critical", "warning", "info")
    annotations = alert["annotations"]
    assert annotations["summary"] and annotations["description"]
    assert annotations["runbook_url"] == rules.runbook_url(rules.Config(), alert["alert"])
    assert annotations["runbook_url"].startswith("https://"), "Alertmanager shows it as a link"
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


# --- rules as data -----------------------------------------------------------------------------


def test_committed_rules_are_rendered_from_the_config() -> None:
    for name in rules.FILES:
        committed = (REPO / f"prometheus/rules/{name}.yml").read_text()
        assert committed == rules.render(name), f"prometheus/rules/{name}.yml: run `make generate`"
    assert [p.stem for p in RULE_FILES] == sorted(rules.FILES)


def test_thresholds_and_durations_come_from_the_config() -> None:
    config = rules.Config(
        stall_seconds=60,
        stall_for="0s",
        divergence_factor=3,
        gpu_temperature_celsius=80,
        error_count=2,
        error_window="1m",
    )
    by_name = {
        rule["alert"]: rule
        for group in yaml.safe_load(rules.render("alerts", config))["groups"]
        for rule in group["rules"]
    }
    assert re.search(r"\) > 60\n", by_name["TrainingRunStalled"]["expr"])
    assert by_name["TrainingRunStalled"]["for"] == "0s"
    assert "> 3 * min by" in by_name["LossDiverging"]["expr"]
    assert "more than 3 times its minimum" in by_name["LossDiverging"]["annotations"]["description"]
    assert "Above 80°C" in by_name["GPUHot"]["annotations"]["description"]
    assert by_name["ErrorRateHigh"]["expr"].endswith("[1m])) > 2")
    assert "More than 2 in 1 minute;" in by_name["ErrorRateHigh"]["annotations"]["description"]


def test_the_runbook_base_is_configurable_and_must_be_absolute(tmp_path: Path) -> None:
    assert (
        rules.main(
            [
                "--runbook-url-base",
                "https://wiki.example.com/ml/runbooks",
                "--stall-seconds",
                "1800",
                str(tmp_path),
            ]
        )
        == 0
    )
    alerts = yaml.safe_load((tmp_path / "alerts.yml").read_text())["groups"]
    urls = {r["annotations"]["runbook_url"] for g in alerts for r in g["rules"]}
    assert "https://wiki.example.com/ml/runbooks#trainingrunstalled" in urls
    assert all(u.startswith("https://wiki.example.com/ml/runbooks#") for u in urls)
    assert ") > 1800\n" in (tmp_path / "alerts.yml").read_text()
    with pytest.raises(SystemExit):
        rules.main(["--runbook-url-base", "docs/runbooks.md", str(tmp_path)])


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
    example = (REPO / ".env.example").read_text()  # no example password either
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, re.MULTILINE)


def test_images_are_pinned_to_the_component_versions() -> None:
    by_repository = {c.image.split(":")[0]: c.image for c in COMPONENTS.values()}
    for name, service in _services().items():
        image = service["image"]
        repository, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"
        assert by_repository[repository] == image, (
            f"{name}: {image}, but components.py says {by_repository[repository]}"
        )
    images = {s["image"] for s in _services().values()}
    assert {c.image for c in COMPONENTS.values() if c.image} <= images


def test_long_running_services_restart_and_keep_their_data_in_named_volumes() -> None:
    volumes = set(COMPOSE["volumes"])
    for name, service in _services().items():
        if service.get("restart") == "no":  # one-shot helpers
            continue
        assert service.get("restart") == "unless-stopped", name
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith("./") or source in volumes, f"{name}: {mount}"
