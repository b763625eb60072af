"""The Helm chart (deploy/helm/traintel), rendered and checked with real tools, as a cluster would.

No cluster runs here, so each layer is checked by the program that owns it:
- ``helm lint --strict`` and ``helm template`` for each profile in ``ci/*-values.yaml``;
- kubeconform: every rendered object against the Kubernetes 1.36 API and the pinned Prometheus
  Operator, OpenTelemetry Operator and Kubeflow CRDs (tests/deploy_tools.py);
- the rules inside the PrometheusRule (and the rule-file ConfigMap) through the same
  ``promtool test rules`` cases as prometheus/rules;
- the collector configuration inside each OpenTelemetryCollector through ``otelcol validate``
  (our build of collector 0.159.0);
- the dashboards inside the ConfigMaps byte for byte against grafana/dashboards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from deploy_tools import KUBERNETES, REPO, crds, kubeconform, run, tool
from traintel.cli import main
from traintel.stack import install

CHART = REPO / "deploy/helm/traintel"
PROFILES = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
RULE_TESTS = sorted((REPO / "prometheus/tests").glob("*.yml"))
KUBE_VERSION = KUBERNETES[1].lstrip("v")


def render(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(
        tool("helm"),
        "template",
        "traintel",
        str(CHART),
        "--namespace",
        "observability",
        "--kube-version",
        KUBE_VERSION,
        *args,
        check=check,
    )


def values_file(profile: str) -> str:
    return str(CHART / "ci" / f"{profile}-values.yaml")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """profile -> the rendered manifests (one multi-document YAML file)."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for profile in PROFILES:
        files[profile] = out / f"{profile}.yaml"
        files[profile].write_text(render("-f", values_file(profile)).stdout)
    return files


def objects(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [d for d in docs if kind is None or d["kind"] == kind]


def test_the_profiles_exist() -> None:
    assert set(PROFILES) >= {"defaults", "kube-prometheus-stack", "standalone", "sidecar"}


@pytest.mark.parametrize("profile", PROFILES)
def test_helm_lint(profile: str) -> None:
    result = run(
        tool("helm"),
        "lint",
        "--strict",
        str(CHART),
        "-f",
        values_file(profile),
        "--kube-version",
        KUBE_VERSION,
    )
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("profile", PROFILES)
def test_every_object_validates_against_the_api_and_crd_schemas(
    rendered: dict[str, Path], profile: str
) -> None:
    result = kubeconform([rendered[profile]])
    summary = json.loads(result.stdout)["summary"]
    assert result.returncode == 0 and summary["invalid"] == summary["errors"] == 0, result.stdout
    assert summary["skipped"] == 0, "every kind must have a schema"
    assert summary["valid"] == len(objects(rendered[profile]))


def test_the_validator_rejects_what_a_cluster_would(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    """The same schemas catch a misspelt CRD field, a wrong type and an unknown core field."""
    docs = objects(rendered["kube-prometheus-stack"])
    broken = []
    for doc in docs:
        if doc["kind"] == "PrometheusRule":
            doc["spec"]["group"] = doc["spec"].pop("groups")  # misspelt
        elif doc["kind"] == "OpenTelemetryCollector":
            doc["spec"]["mode"] = "cronjob"  # not one of the enum
        elif doc["kind"] == "NetworkPolicy":
            doc["spec"]["podSelectors"] = {}  # unknown field
        else:
            continue
        broken.append(doc)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(broken))
    summary = json.loads(kubeconform([path]).stdout)["summary"]
    assert summary["invalid"] == len(broken) and summary["valid"] == 0


def test_the_pinned_crds_have_the_versions_the_chart_uses() -> None:
    served = {
        (crd["spec"]["group"], crd["spec"]["names"]["kind"], v["name"])
        for crd in crds()
        for v in crd["spec"]["versions"]
        if v["served"]
    }
    for used in (
        ("monitoring.coreos.com", "PrometheusRule", "v1"),
        ("monitoring.coreos.com", "PodMonitor", "v1"),
        ("opentelemetry.io", "OpenTelemetryCollector", "v1beta1"),
        ("kubeflow.org", "PyTorchJob", "v1"),
    ):
        assert used in served


# --- the rules --------------------------------------------------------------------------------


def _source_groups() -> list[dict]:
    return [
        g
        for path in sorted((REPO / "prometheus/rules").glob("*.yml"))
        for g in yaml.safe_load(path.read_text())["groups"]
    ]


def _chart_rule_sets(path: Path) -> list[tuple[str, list[dict]]]:
    """(where, groups) of every rule set in the rendered manifests."""
    sets = [
        (f"PrometheusRule {d['metadata']['name']}", d["spec"]["groups"])
        for d in objects(path, "PrometheusRule")
    ]
    for d in objects(path, "ConfigMap"):
        for key, text in d.get("data", {}).items():
            if key.endswith("rules.yaml"):
                sets.append((f"ConfigMap {d['metadata']['name']}", yaml.safe_load(text)["groups"]))
    return sets


@pytest.mark.parametrize("profile", PROFILES)
def test_chart_rules_are_the_repository_rules(rendered: dict[str, Path], profile: str) -> None:
    base = (
        yaml.safe_load(Path(values_file(profile)).read_text())
        .get("prometheusRule", {})
        .get("runbookBaseURL", "")
    )
    sets = _chart_rule_sets(rendered[profile])
    assert sets, f"{profile} renders no rules"
    for _, groups in sets:
        assert _unprefixed(groups, base) == _source_groups()


def _rebased(url: str, base: str) -> str:
    """A runbook link as the chart renders it with ``runbookBaseURL`` = ``base``."""
    return base + url[url.index("docs/runbooks.md#") :] if base else url


def _unprefixed(groups: list[dict], base: str) -> list[dict]:
    """``groups`` with the runbook links put back as the repository's rules have them."""
    source = {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for group in _source_groups()
        for rule in group["rules"]
        if "alert" in rule
    }
    for group in groups:
        for rule in group["rules"]:
            url = rule.get("annotations", {}).get("runbook_url")
            if url and base:
                assert url == _rebased(source[rule["alert"]], base)
                rule["annotations"]["runbook_url"] = source[rule["alert"]]
    return groups


@pytest.mark.parametrize("profile", PROFILES)
def test_chart_rules_pass_the_promtool_unit_tests(
    rendered: dict[str, Path], profile: str, tmp_path: Path
) -> None:
    """prometheus/tests/*.yml, pointed at the rules as the chart renders them (runbook links with
    the profile's base URL)."""
    promtool = install.binary("prometheus", "promtool")
    if promtool is None:
        pytest.skip(install.missing_reason("prometheus") or "promtool is not installed")
    base = (
        yaml.safe_load(Path(values_file(profile)).read_text())
        .get("prometheusRule", {})
        .get("runbookBaseURL", "")
    )
    for i, (where, groups) in enumerate(_chart_rule_sets(rendered[profile])):
        rules = tmp_path / f"rules-{i}.yml"
        rules.write_text(yaml.safe_dump({"groups": groups}))
        tests = []
        for source in RULE_TESTS:
            case = yaml.safe_load(source.read_text())
            case["rule_files"] = [str(rules)]
            for test in case.get("tests", []):
                for alert_test in test.get("alert_rule_test", []):
                    for alert in alert_test.get("exp_alerts", []):
                        annotations = alert.get("exp_annotations", {})
                        if "runbook_url" in annotations:
                            annotations["runbook_url"] = _rebased(annotations["runbook_url"], base)
            path = tmp_path / f"{i}-{source.name}"
            path.write_text(yaml.safe_dump(case))
            tests.append(str(path))
        result = run(str(promtool), "test", "rules", *tests, check=False)
        assert result.returncode == 0, f"{where}:\n{result.stdout}{result.stderr}"


# --- the collectors ---------------------------------------------------------------------------

#: what the chart's ${env:...} references are set to when validating (values from Secrets)
SECRET_ENV = {"TRAINTEL_REMOTE_WRITE_HEADER_0": "Bearer test-token"}
#: feature gates that turn deprecated settings into errors, which validate otherwise accepts
#: silently (the remote-write exporter's top-level HTTP client keys, deprecated in 0.158.0)
STRICT_GATES = "exporter.prometheusremotewritexporter.removeTopLevelHTTPSettings"


@pytest.mark.parametrize("profile", PROFILES)
def test_collector_configs_validate_with_collector_0_159(
    rendered: dict[str, Path], profile: str, tmp_path: Path
) -> None:
    otelcol = install.binary("otelcol")
    if otelcol is None:
        pytest.skip(install.missing_reason("otelcol") or "the collector is not installed")
    collectors = objects(rendered[profile], "OpenTelemetryCollector")
    assert collectors
    for cr in collectors:
        config = tmp_path / f"{cr['metadata']['name']}-{cr['metadata']['namespace']}.yaml"
        config.write_text(yaml.safe_dump(cr["spec"]["config"]))
        result = subprocess.run(
            [str(otelcol), "validate", "--config", str(config), f"--feature-gates={STRICT_GATES}"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **SECRET_ENV},
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{cr['metadata']['name']}:\n{output}"
        assert "deprecated" not in output.lower(), output


def test_every_env_reference_in_a_collector_config_is_set(rendered: dict[str, Path]) -> None:
    """${env:X} in a CR's config must name a variable the CR's pods get (GOMEMLIMIT aside)."""
    for profile, path in rendered.items():
        for cr in objects(path, "OpenTelemetryCollector"):
            used = set(re.findall(r"\$\{env:(\w+)", json.dumps(cr["spec"]["config"])))
            given = {e["name"] for e in cr["spec"].get("env", [])}
            assert used <= given, (profile, cr["metadata"]["name"], used - given)


def test_tiers_connect(rendered: dict[str, Path]) -> None:
    """Agents and sidecars forward to the gateway's Service; the NetworkPolicy selects the pods
    the operator labels for each CR."""
    for profile, path in rendered.items():
        by_name = {cr["metadata"]["name"]: cr for cr in objects(path, "OpenTelemetryCollector")}
        gateway = by_name["traintel-gateway"]
        assert gateway["spec"]["mode"] == "deployment"
        first = [cr for cr in by_name.values() if cr["spec"]["mode"] in ("daemonset", "sidecar")]
        assert first, profile
        for cr in first:
            endpoint = cr["spec"]["config"]["exporters"]["otlp_grpc/gateway"]["endpoint"]
            assert endpoint == "traintel-gateway-collector.observability.svc:4317"
        policies = {p["metadata"]["name"]: p for p in objects(path, "NetworkPolicy")}
        selector = policies["traintel-gateway"]["spec"]["podSelector"]["matchLabels"]
        assert selector["app.kubernetes.io/instance"] == "observability.traintel-gateway"
        assert selector["app.kubernetes.io/managed-by"] == "opentelemetry-operator"


def test_sidecar_crs_use_no_field_the_operator_refuses_for_sidecars(
    rendered: dict[str, Path],
) -> None:
    """The CRD's CEL rules (x-kubernetes-validations, which kubeconform does not evaluate):
    a sidecar has no tolerations, priorityClassName, affinity or additionalContainers."""
    crd = next(c for c in crds() if c["spec"]["names"]["kind"] == "OpenTelemetryCollector")
    spec = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")["schema"][
        "openAPIV3Schema"
    ]["properties"]["spec"]
    refused = set(re.findall(r"attribute '(\w+)'", json.dumps(spec["x-kubernetes-validations"])))
    assert refused == {"tolerations", "priorityClassName", "affinity", "additionalContainers"}
    sidecars = [
        cr
        for cr in objects(rendered["sidecar"], "OpenTelemetryCollector")
        if cr["spec"]["mode"] == "sidecar"
    ]
    assert sidecars
    for cr in sidecars:
        assert not refused & set(cr["spec"])


# --- the dashboards ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_dashboards_are_the_repository_dashboards_byte_for_byte(
    rendered: dict[str, Path], profile: str
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["dashboards"]
    shipped = {}
    for cm in objects(rendered[profile], "ConfigMap"):
        if cm["metadata"].get("labels", {}).get(values["label"]) == values["labelValue"]:
            ((name, text),) = cm["data"].items()
            shipped[name] = text + "\n"
    expected = {p.name: p.read_text() for p in (REPO / "grafana/dashboards").glob("*.json")}
    assert shipped == expected


# --- values: secrets, errors ------------------------------------------------------------------


def test_credentials_come_from_secrets_only(rendered: dict[str, Path]) -> None:
    standalone = objects(rendered["standalone"])
    assert not [d for d in standalone if d["kind"] == "Secret"]
    gateway = next(
        d
        for d in standalone
        if d["kind"] == "OpenTelemetryCollector" and d["metadata"]["name"] == "traintel-gateway"
    )
    env = {e["name"]: e for e in gateway["spec"]["env"]}
    assert env["TRAINTEL_REMOTE_WRITE_HEADER_0"]["valueFrom"]["secretKeyRef"] == {
        "name": "mimir-credentials",
        "key": "authorization",
    }
    headers = gateway["spec"]["config"]["exporters"]["prometheus_remote_write"]["http"]["headers"]
    assert headers == {
        "X-Scope-OrgID": "ml-training",
        "Authorization": "${env:TRAINTEL_REMOTE_WRITE_HEADER_0}",
    }
    secretish = re.compile(
        r"(password|passwd|token|secret|api_?key|credential)s?\s*:", re.IGNORECASE
    )
    for values in [CHART / "values.yaml", *(CHART / "ci").glob("*.yaml")]:
        for line in values.read_text().splitlines():
            code = line.split("#", 1)[0]
            assert not secretish.search(code) or "secretName" in code or "Secret" in code, (
                f"{values.name}: {line.strip()!r} looks like a credential in values"
            )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # refused by values.schema.json, naming the key
        (["--set", "collector.agentMode=node"], "at '/collector/agentMode'"),
        (
            ["--set", "collector.metricsMode=remoteWrite"],
            "collector.remoteWrite.endpoint is required",
        ),
        (
            ["--set", "collector.agentMode=sidecar"],
            "collector.metricsMode scrape needs collector.agentMode daemonset",
        ),
        (
            ["--set", "collector.remoteWrite.headersFromSecrets[0].header=Authorization"],
            "secretName",
        ),
    ],
)
def test_bad_values_fail_with_the_key_named(values: list[str], message: str) -> None:
    result = render(*values, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# --- a default kube-prometheus-stack -------------------------------------------------------------

#: what a default kube-prometheus-stack install's Prometheus selects on (its chart's
#: ruleSelector/podMonitorSelector/serviceMonitorSelector with *SelectorNilUsesHelmValues true)
KPS_SELECTOR = {"release": "kube-prometheus-stack"}


def test_the_defaults_are_picked_up_by_a_default_kube_prometheus_stack(
    rendered: dict[str, Path],
) -> None:
    """Every rule and monitor carries the release label; metrics are scraped from the agents,
    since that Prometheus has no remote-write receiver by default; nothing is remote-written."""
    docs = objects(rendered["defaults"])
    for doc in docs:
        if doc["kind"] in ("PrometheusRule", "PodMonitor", "ServiceMonitor"):
            assert KPS_SELECTOR.items() <= doc["metadata"]["labels"].items(), doc["metadata"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("PrometheusRule", "traintel") in kinds
    assert ("PodMonitor", "traintel-agent-metrics") in kinds
    assert ("PodMonitor", "traintel-collectors") in kinds
    collectors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "OpenTelemetryCollector"}
    for cr in collectors.values():
        assert "prometheus_remote_write" not in cr["spec"]["config"]["exporters"]
    agent = collectors["traintel-agent"]
    assert agent["spec"]["config"]["exporters"]["prometheus"]["endpoint"] == "0.0.0.0:8889"
    assert agent["spec"]["config"]["service"]["pipelines"]["metrics"]["exporters"] == ["prometheus"]
    assert {"name": "prom-export", "port": 8889, "protocol": "TCP"} in agent["spec"]["ports"]
    monitor = next(d for d in docs if d["metadata"]["name"] == "traintel-agent-metrics")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "prom-export"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == (
        "observability.traintel-agent"
    )


def test_no_collector_asks_the_operator_for_monitors(rendered: dict[str, Path]) -> None:
    """The chart renders the collectors' monitors itself: the OpenTelemetry Operator's
    (spec.observability.metrics.enableMetrics) would also scrape the agents' exporter port named
    "prometheus", which traintel-agent-metrics scrapes, storing every training series twice."""
    for profile, path in rendered.items():
        for cr in objects(path, "OpenTelemetryCollector"):
            metrics = cr["spec"].get("observability", {}).get("metrics", {})
            assert not metrics.get("enableMetrics"), (profile, cr["metadata"]["name"])


def test_the_release_label_follows_prometheus_release() -> None:
    out = render("--set", "prometheusRelease=monitoring-stack").stdout
    labels = [
        d["metadata"]["labels"]
        for d in yaml.safe_load_all(out)
        if d and d["kind"] in ("PrometheusRule", "PodMonitor")
    ]
    assert labels and all(label["release"] == "monitoring-stack" for label in labels)
    out = render("--set", "prometheusRelease=").stdout
    assert not [
        d for d in yaml.safe_load_all(out) if d and "release" in d["metadata"].get("labels", {})
    ]


# --- a publishable chart ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "key"),
    [
        (["--set", "collector.gateway.replicas=two"], "replicas"),
        (["--set-string", "prometheusRule.enabled=yes"], "enabled"),
        (["--set", "collector.remoteWrit.endpoint=http://x"], "remoteWrit"),
        (["--set", "dashbords.enabled=false"], "dashbords"),
        (["--set", "collector.metricsMode=push"], "metricsMode"),
        (["--set", "collector.agent.goMemLimit=400M"], "goMemLimit"),
        (
            ["--set", "collector.remoteWrite.headersFromSecrets[0].header=Authorization"],
            "headersFromSecrets",
        ),
    ],
)
def test_the_schema_refuses_wrong_types_and_unknown_keys(values: list[str], key: str) -> None:
    for command in (["template", "traintel"], ["lint", "--strict"]):
        result = run(tool("helm"), *command, str(CHART), *values, check=False)
        assert result.returncode != 0, (command, values)
        output = result.stdout + result.stderr
        assert "schema" in output and key in output, output


def test_helm_package_gives_a_self_contained_chart(tmp_path: Path) -> None:
    """No links, the generated files inside: the packaged chart renders every alert rule."""
    assert not [p for p in CHART.rglob("*") if p.is_symlink()]
    run(tool("helm"), "package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("traintel-*.tgz")
    out = run(
        tool("helm"),
        "template",
        "traintel",
        str(archive),
        "--namespace",
        "observability",
        "--kube-version",
        KUBE_VERSION,
    ).stdout
    rules = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "PrometheusRule")
    assert _unprefixed(rules["spec"]["groups"], "") == _source_groups()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert archive.name == f"traintel-{chart['version']}.tgz"


def test_stack_init_helm_writes_the_chart(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["stack", "init", "--helm", str(tmp_path / "chart")])
    assert result.exit_code == 0, result.output
    written = sorted(
        str(p.relative_to(tmp_path / "chart"))
        for p in (tmp_path / "chart").rglob("*")
        if p.is_file()
    )
    expected = sorted(str(p.relative_to(CHART)) for p in CHART.rglob("*") if p.is_file())
    assert written == expected
    run(tool("helm"), "lint", "--strict", str(tmp_path / "chart"), "--kube-version", KUBE_VERSION)


def test_plain_manifests_command_renders_what_helm_does(tmp_path: Path) -> None:
    """`make manifests` (scripts/render_manifests.py) for teams without Helm."""
    out = tmp_path / "standalone.yaml"
    run(
        "python",
        str(REPO / "scripts/render_manifests.py"),
        "--values",
        values_file("standalone"),
        "--namespace",
        "observability",
        "--output",
        str(out),
    )
    assert out.read_text() == render("-f", values_file("standalone")).stdout
