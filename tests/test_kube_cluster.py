"""The chart and the job examples applied to a real Kubernetes API server, and what the real
Prometheus Operator makes of them.

kube-apiserver v1.36.3 with etcd (tests/kube_fixture.py, one per test run) gets the pinned CRDs
(Prometheus Operator v0.94.1, OpenTelemetry Operator v0.148.0, Kubeflow training operator v1.9.2)
and then, by server-side apply as ``kubectl apply --server-side`` sends it, every object of every
``ci/`` profile, the Indexed Job and the PyTorchJob: OpenAPI and CRD structural schemas, the CRDs'
CEL rules, defaulting and admission run as on a cluster. Nothing is scheduled (no kubelet).

The Prometheus Operator (built from its Go module, v0.85.0: see stack/go/prometheus-operator)
then runs against that server with ``--kubeconfig`` and a ``Prometheus`` resource that selects as
a default kube-prometheus-stack does; the test reads the rule files and scrape configuration it
generates. The OpenTelemetry Operator (v0.148.0, webhooks off) runs beside it and makes the
collectors' workloads and self-monitoring monitors, so every monitor the Prometheus would scrape
is the real operators' output.
"""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from deploy_tools import CRD_SOURCES, KUBERNETES, REPO, _module, crds, run, tool
from kube_fixture import Kube, KubeError, _free_port, _stop
from traintel.stack import install
from traintel.stack.components import DEPLOY_TOOLS

pytestmark = pytest.mark.slow

CHART = REPO / "deploy/helm/traintel"
PROFILES = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
KPS = "kube-prometheus-stack"


class _CRDLoader(yaml.SafeLoader):
    """YAML 1.1's `=` ("value" tag) is a plain string in the CRDs' enums (as for the Go parser)."""


_CRDLoader.add_constructor("tag:yaml.org,2002:value", yaml.SafeLoader.construct_yaml_str)


def render(namespace: str, *args: str) -> list[dict[str, Any]]:
    out = run(
        tool("helm"),
        "template",
        "traintel",
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBERNETES[1].lstrip("v"),
        *args,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def cluster(kube: Kube) -> Kube:
    """The API server with every pinned CRD installed (all of the Prometheus Operator's, since
    the operator watches them all)."""
    everything = {c["metadata"]["name"]: c for c in crds()}
    for source, folder in (
        ("prometheus-operator", "example/prometheus-operator-crd"),
        ("opentelemetry-operator", "config/crd/bases"),
    ):
        module, version, _ = CRD_SOURCES[source]
        for path in sorted((_module(module, version) / folder).glob("*.yaml")):
            crd = yaml.load(path.read_text(), Loader=_CRDLoader)
            everything.setdefault(crd["metadata"]["name"], crd)
    kube.install_crds(list(everything.values()))
    return kube


def apply_profile(cluster: Kube, namespace: str, *args: str) -> list[dict[str, Any]]:
    docs = render(namespace, *args)
    for ns in {namespace} | {d["metadata"].get("namespace") for d in docs} - {None}:
        cluster.namespace(ns)
    return cluster.apply_all(docs)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_applies_to_a_real_api_server(cluster: Kube, profile: str) -> None:
    namespace = f"traintel-{profile}"
    docs = render(namespace, "-f", str(CHART / "ci" / f"{profile}-values.yaml"))
    stored = apply_profile(cluster, namespace, "-f", str(CHART / "ci" / f"{profile}-values.yaml"))
    assert len(stored) == len(docs)
    for sent, got in zip(docs, stored):
        assert got["metadata"]["uid"] and got["kind"] == sent["kind"]
        # what the server pruned (a field the schema does not know) would be lost silently
        assert _subset(sent.get("spec", sent.get("data")), got.get("spec", got.get("data"))), (
            profile,
            sent["kind"],
            sent["metadata"]["name"],
        )


def _subset(sent: Any, got: Any) -> bool:
    """Whether everything in ``sent`` is in ``got`` (which may have defaults added)."""
    if isinstance(sent, dict):
        return isinstance(got, dict) and all(
            k in got and _subset(v, got[k]) for k, v in sent.items()
        )
    if isinstance(sent, list):
        return (
            isinstance(got, list)
            and len(sent) == len(got)
            and all(_subset(a, b) for a, b in zip(sent, got))
        )
    return sent == got or str(sent) == str(got)


def test_the_api_server_refuses_what_the_crds_refuse(cluster: Kube) -> None:
    """The check can fail: a CEL rule (no tolerations on a sidecar), an enum and a type."""
    namespace = "traintel-refused"
    cluster.namespace(namespace)
    sidecar = next(
        d
        for d in render(namespace, "-f", str(CHART / "ci/sidecar-values.yaml"))
        if d["kind"] == "OpenTelemetryCollector" and d["spec"]["mode"] == "sidecar"
    )
    sidecar["spec"]["tolerations"] = [{"operator": "Exists"}]
    with pytest.raises(KubeError) as refused:
        cluster.apply(sidecar, dry_run=True)
    assert refused.value.status == 422 and "tolerations" in str(refused.value)
    gateway = next(
        d
        for d in render(namespace)
        if d["kind"] == "OpenTelemetryCollector" and d["spec"]["mode"] == "deployment"
    )
    gateway["spec"]["mode"] = "cronjob"
    with pytest.raises(KubeError) as refused:
        cluster.apply(gateway, dry_run=True)
    assert refused.value.status == 422 and "spec.mode" in str(refused.value)
    rule = next(d for d in render(namespace) if d["kind"] == "PrometheusRule")
    rule["spec"]["groups"][0]["interval"] = 30  # a duration string
    with pytest.raises(KubeError) as refused:
        cluster.apply(rule, dry_run=True)
    # server-side apply refuses a wrong type while merging, before validation (HTTP 500)
    assert "expected string" in str(refused.value)


def test_the_job_examples_apply_with_defaults(cluster: Kube) -> None:
    docs = [
        d
        for path in sorted((REPO / "deploy/kubernetes").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    for ns in {d["metadata"].get("namespace", "default") for d in docs}:
        cluster.namespace(ns)
    stored = {d["kind"]: d for d in cluster.apply_all(docs)}
    assert {"Job", "PyTorchJob", "Service"} <= set(stored)
    job = stored["Job"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"]
    # set by the API server's defaulting, not by the example
    assert "backoffLimitPerIndex" in job or "backoffLimit" in job
    assert job["template"]["spec"]["dnsPolicy"] == "ClusterFirst"
    replicas = stored["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]
    assert {"Master", "Worker"} <= set(replicas)


# --- the Prometheus Operator ------------------------------------------------------------------

#: a Prometheus as kube-prometheus-stack's chart creates it by default: rules and monitors
#: selected by its release label, in every namespace
KPS_PROMETHEUS = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "Prometheus",
    "metadata": {
        "name": f"{KPS}-prometheus",
        "namespace": "monitoring",
        "labels": {"release": KPS},
    },
    "spec": {
        "replicas": 1,
        "serviceAccountName": f"{KPS}-prometheus",
        "ruleSelector": {"matchLabels": {"release": KPS}},
        "ruleNamespaceSelector": {},
        "serviceMonitorSelector": {"matchLabels": {"release": KPS}},
        "serviceMonitorNamespaceSelector": {},
        "podMonitorSelector": {"matchLabels": {"release": KPS}},
        "podMonitorNamespaceSelector": {},
        "probeSelector": {"matchLabels": {"release": KPS}},
        "probeNamespaceSelector": {},
        "scrapeConfigSelector": {"matchLabels": {"release": KPS}},
        "scrapeConfigNamespaceSelector": {},
        "enableRemoteWriteReceiver": False,
    },
}


@pytest.fixture(scope="module")
def operator(
    cluster: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    status = install.install(["prometheus-operator"], say=lambda _: None, table=DEPLOY_TOOLS)
    binary = install.binary("prometheus-operator")
    if binary is None:
        pytest.skip(
            "the Prometheus Operator could not be built: "
            + status.get("prometheus-operator", {}).get("reason", "unknown reason")
        )
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with log.open("wb") as out:
        # outside a cluster: the kubeconfig named by KUBECONFIG (this release has no flag for it)
        proc = subprocess.Popen(
            [
                str(binary),
                f"--web.listen-address=127.0.0.1:{_free_port()}",
                "--log-level=info",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        )
    try:
        yield proc
    finally:
        _stop(proc)
        print(log.read_text(errors="replace")[-3000:])


@pytest.fixture(scope="module")
def otel_operator(
    cluster: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """The OpenTelemetry Operator v0.148.0, outside a cluster (KUBECONFIG), webhooks off (no
    certificate manager here): it reconciles the chart's collectors into workloads, Services and
    the self-monitoring ServiceMonitors/PodMonitors."""
    status = install.install(["opentelemetry-operator"], say=lambda _: None, table=DEPLOY_TOOLS)
    binary = install.binary("opentelemetry-operator")
    if binary is None:
        pytest.skip(
            "the OpenTelemetry Operator could not be built: "
            + status.get("opentelemetry-operator", {}).get("reason", "unknown reason")
        )
    log = tmp_path_factory.mktemp("otel-operator") / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "--enable-webhooks=false",
                f"--metrics-addr=127.0.0.1:{_free_port()}",
                f"--health-probe-addr=127.0.0.1:{_free_port()}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        )
    try:
        yield proc
    finally:
        _stop(proc)
        print(log.read_text(errors="replace")[-3000:])


def _monitors(
    cluster: Kube,
    namespace: str,
    operator: subprocess.Popen[bytes],
    at_least: int,
    timeout: float = 120,
) -> list[dict[str, Any]]:
    """The ServiceMonitors and PodMonitors in ``namespace``, once there are ``at_least``."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        assert operator.poll() is None, f"the OpenTelemetry Operator exited {operator.returncode}"
        found = [
            m
            for plural in ("servicemonitors", "podmonitors")
            for m in cluster.get(f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/{plural}")[
                "items"
            ]
        ]
        if len(found) >= at_least:
            return found
        time.sleep(1)
    raise TimeoutError(
        f"{len(found)} monitors in {namespace}, expected {at_least}: "
        f"{[m['metadata']['name'] for m in found]}"
    )


def _generated(
    cluster: Kube,
    name: str,
    operator: subprocess.Popen[bytes],
    jobs: set[str],
    timeout: float = 120,
) -> tuple[dict[str, Any], str]:
    """(the scrape configuration, every generated rule file's text) of Prometheus ``name``, once
    the configuration has the scrape ``jobs``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        assert operator.poll() is None, f"the operator exited {operator.returncode}"
        try:
            secret = cluster.get(f"/api/v1/namespaces/monitoring/secrets/prometheus-{name}")
            config = yaml.safe_load(
                gzip.decompress(base64.b64decode(secret["data"]["prometheus.yaml.gz"]))
            )
            maps = cluster.get(
                f"/api/v1/namespaces/monitoring/configmaps?labelSelector=prometheus-name%3D{name}"
            )["items"]
            rules = "".join(text for cm in maps for text in (cm.get("data") or {}).values())
            found = {job["job_name"] for job in config.get("scrape_configs") or []}
            if rules and jobs <= found:
                return config, rules
            last = AssertionError(f"jobs missing: {sorted(jobs - found)}")
        except (KubeError, KeyError) as error:
            last = error
        time.sleep(1)
    raise TimeoutError(f"the operator generated no configuration for {name} ({last})")


def test_the_operators_load_every_rule_and_monitor_of_the_defaults(
    cluster: Kube, operator: subprocess.Popen[bytes], otel_operator: subprocess.Popen[bytes]
) -> None:
    cluster.namespace("monitoring")
    cluster.apply(KPS_PROMETHEUS)
    applied = apply_profile(cluster, "observability")
    # a release labelled for another Prometheus: must not be selected
    apply_profile(cluster, "other-team", "--set", "prometheusRelease=other-stack")
    collectors = [d for d in applied if d["kind"] == "OpenTelemetryCollector"]
    # the chart's agents' PodMonitor, and one self-monitoring monitor per collector at least
    monitors = _monitors(cluster, "observability", otel_operator, 1 + len(collectors))
    for monitor in monitors:
        assert monitor["metadata"]["labels"].get("release") == KPS, monitor["metadata"]
    # the agents' pods serve the training metrics where the PodMonitor looks
    agent = cluster.get(
        "/apis/apps/v1/namespaces/observability/daemonsets/traintel-agent-collector"
    )
    ports = {
        (p.get("name"), p["containerPort"])
        for c in agent["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    assert ("prom-export", 8889) in ports, ports
    expected = {
        f"{'serviceMonitor' if m['kind'] == 'ServiceMonitor' else 'podMonitor'}/observability/"
        f"{m['metadata']['name']}/{i}"
        for m in monitors
        for i in range(len(m["spec"].get("endpoints") or m["spec"].get("podMetricsEndpoints")))
    }
    assert "podMonitor/observability/traintel-agent-metrics/0" in expected
    config, rules_text = _generated(cluster, f"{KPS}-prometheus", operator, expected)
    loaded = [
        rule
        for group in yaml.safe_load_all(rules_text)
        if group
        for g in group["groups"]
        for rule in g["rules"]
    ]
    source = [
        rule
        for path in sorted((REPO / "prometheus/rules").glob("*.yml"))
        for g in yaml.safe_load(path.read_text())["groups"]
        for rule in g["rules"]
    ]
    names = sorted(r.get("alert") or r["record"] for r in loaded)
    assert names == sorted(r.get("alert") or r["record"] for r in source), (
        "every traintel alert and recording rule, once (not other-team's)"
    )
    by_name = {r.get("alert") or r["record"]: r for r in loaded}
    for rule in source:
        assert by_name[rule.get("alert") or rule["record"]]["expr"].strip() == (
            rule["expr"].strip()
        )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert expected <= set(jobs), "every traintel monitor is scraped"
    assert not [j for j in jobs if "other-team" in j]
    job = jobs["podMonitor/observability/traintel-agent-metrics/0"]
    assert job["honor_labels"] is True
    kept = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert any("observability.traintel-agent" in str(r.get("regex")) for r in kept)
    assert any("prom-export" in str(r.get("regex")) for r in kept)
