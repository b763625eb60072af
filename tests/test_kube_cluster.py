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
generates, and a real Prometheus applies that scrape configuration's relabelling to the pods the
collectors would have: every monitor the chart renders must select exactly its pods and port.

The OpenTelemetry Operator's program is not built (about 14 minutes cold on 2 cores, which a cold
``make test`` cannot afford): its CRDs validate the chart's collectors here, and the collectors'
pods are a stand-in made from the CRs as its v0.148.0 makes them (checked against its source).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
import yaml

from deploy_tools import CHART, CRD_SOURCES, REPO, _module, crds, helm_template
from kube_fixture import Kube, KubeError, _free_port, _stop
from traintel.stack import install
from traintel.stack.components import DEPLOY_TOOLS

pytestmark = pytest.mark.slow

PROFILES = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
KPS = "kube-prometheus-stack"


class _CRDLoader(yaml.SafeLoader):
    """YAML 1.1's `=` ("value" tag) is a plain string in the CRDs' enums (as for the Go parser)."""


_CRDLoader.add_constructor("tag:yaml.org,2002:value", yaml.SafeLoader.construct_yaml_str)


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
    docs = helm_template(*args, namespace=namespace)
    for ns in {namespace} | {d["metadata"].get("namespace") for d in docs} - {None}:
        cluster.namespace(ns)
    return cluster.apply_all(docs)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_applies_to_a_real_api_server(cluster: Kube, profile: str) -> None:
    namespace = f"traintel-{profile}"
    docs = helm_template("-f", str(CHART / "ci" / f"{profile}-values.yaml"), namespace=namespace)
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
        for d in helm_template("-f", str(CHART / "ci/sidecar-values.yaml"), namespace=namespace)
        if d["kind"] == "OpenTelemetryCollector" and d["spec"]["mode"] == "sidecar"
    )
    sidecar["spec"]["tolerations"] = [{"operator": "Exists"}]
    with pytest.raises(KubeError) as refused:
        cluster.apply(sidecar, dry_run=True)
    assert refused.value.status == 422 and "tolerations" in str(refused.value)
    gateway = next(
        d
        for d in helm_template(namespace=namespace)
        if d["kind"] == "OpenTelemetryCollector" and d["spec"]["mode"] == "deployment"
    )
    gateway["spec"]["mode"] = "cronjob"
    with pytest.raises(KubeError) as refused:
        cluster.apply(gateway, dry_run=True)
    assert refused.value.status == 422 and "spec.mode" in str(refused.value)
    rule = next(d for d in helm_template(namespace=namespace) if d["kind"] == "PrometheusRule")
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


# --- the collectors' pods: a stand-in for the OpenTelemetry Operator -------------------------

#: the labels the OpenTelemetry Operator v0.148.0 puts on every collector pod
#: (internal/manifests/manifestutils SelectorLabels) besides app.kubernetes.io/instance
#: ("<namespace>.<CR name>", cut at 63 characters)
OPERATOR_LABELS = {
    "app.kubernetes.io/managed-by": "opentelemetry-operator",
    "app.kubernetes.io/part-of": "opentelemetry",
    "app.kubernetes.io/component": "opentelemetry-collector",
}
#: its collector container, and the port it names for the collector's own telemetry (8888)
OPERATOR_CONTAINER = "otc-container"
OPERATOR_TELEMETRY_PORT = "metrics"


def operator_pods(crs: list[dict[str, Any]], replicas: int = 2) -> list[dict[str, Any]]:
    """The pods the operator would make of the chart's collectors (no kubelet runs here, and the
    operator is not built: a stand-in), as Kubernetes service discovery describes each
    container port: ``replicas`` pods per DaemonSet or Deployment, with the CR's ``spec.ports``,
    its OTLP receivers' ports and the telemetry port. Sidecars live in the training pods."""
    pods = []
    for cr in crs:
        if cr["spec"]["mode"] == "sidecar":
            continue
        meta = cr["metadata"]
        labels = {
            **OPERATOR_LABELS,
            "app.kubernetes.io/instance": f"{meta['namespace']}.{meta['name']}"[:63],
        }
        ports = [(p["name"], p["port"]) for p in cr["spec"].get("ports", [])]
        ports += [("otlp-grpc", 4317), ("otlp-http", 4318), (OPERATOR_TELEMETRY_PORT, 8888)]
        for i in range(replicas):
            pods.append(
                {
                    "namespace": meta["namespace"],
                    "name": f"{meta['name']}-collector-{i}",
                    "labels": labels,
                    "ports": ports,
                }
            )
    return pods


def test_the_stand_in_pods_are_the_operators() -> None:
    """The stand-in's labels, container and port names, read in the pinned operator's source."""
    module, version, _ = CRD_SOURCES["opentelemetry-operator"]
    source = _module(module, version)
    labels = (source / "internal/manifests/manifestutils/labels.go").read_text()
    selector = labels[labels.index("func SelectorLabels(") :]
    selector = selector[: selector.index("\n}\n")]
    found = dict(re.findall(r'"(app\.kubernetes\.io/[\w-]+)":\s*(\S+),', selector))
    assert set(found) == {*OPERATOR_LABELS, "app.kubernetes.io/instance"}, found
    assert found["app.kubernetes.io/managed-by"] == '"opentelemetry-operator"'
    assert found["app.kubernetes.io/part-of"] == '"opentelemetry"'
    assert found["app.kubernetes.io/component"] == "component"
    assert 'naming.Truncate("%s.%s", 63, instance.Namespace, instance.Name)' in selector
    collector = (source / "internal/manifests/collector/collector.go").read_text()
    assert 'ComponentOpenTelemetryCollector = "opentelemetry-collector"' in collector
    naming = (source / "internal/naming/main.go").read_text()
    assert f'func Container() string {{\n\treturn "{OPERATOR_CONTAINER}"' in naming
    container = (source / "internal/manifests/collector/container.go").read_text()
    assert re.search(
        rf'Name:\s+"{OPERATOR_TELEMETRY_PORT}",\s+ContainerPort:\s+metricsPort', container
    )


def _sd_labels(pod: dict[str, Any], port: tuple[str, int], address: str) -> dict[str, str]:
    """What Kubernetes service discovery (role pod) gives one container port of a pod."""
    labels = {
        "__address__": address,
        "__meta_kubernetes_namespace": pod["namespace"],
        "__meta_kubernetes_pod_name": pod["name"],
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_container_init": "false",
        "__meta_kubernetes_pod_container_name": OPERATOR_CONTAINER,
        "__meta_kubernetes_pod_container_port_name": port[0],
        "__meta_kubernetes_pod_container_port_number": str(port[1]),
        "__meta_kubernetes_pod_container_port_protocol": "TCP",
    }
    for key, value in pod["labels"].items():
        name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        labels[f"__meta_kubernetes_pod_label_{name}"] = value
        labels[f"__meta_kubernetes_pod_labelpresent_{name}"] = "true"
    return labels


def scraped(
    jobs: list[dict[str, Any]], pods: list[dict[str, Any]], directory: Path
) -> dict[str, dict[tuple[str, str], dict[str, str]]]:
    """Per scrape job, the (pod, port name) targets a real Prometheus keeps after the job's own
    relabelling, with their labels: each job's Kubernetes discovery replaced by a file of the
    pods in the namespaces it watches."""
    prometheus = install.binary("prometheus")
    if prometheus is None:
        pytest.skip(install.missing_reason("prometheus") or "Prometheus is not installed")
    configs = []
    for n, job in enumerate(jobs):
        (sd,) = job.pop("kubernetes_sd_configs")
        assert sd["role"] == "pod" and "selectors" not in sd, sd  # the stand-in knows no more
        names = (sd.get("namespaces") or {}).get("names")
        groups = [
            {
                # a loopback address per target: nothing need listen there
                "targets": [address],
                "labels": _sd_labels(pod, port, address),
            }
            for i, pod in enumerate(pods)
            if names is None or pod["namespace"] in names
            for j, port in enumerate(pod["ports"])
            for address in [f"127.0.{i + 1}.{j + 1}:{port[1]}"]
        ]
        targets = directory / f"targets-{n}.json"
        targets.write_text(json.dumps(groups))
        configs.append({**job, "file_sd_configs": [{"files": [str(targets)]}]})
    config = directory / "prometheus.yml"
    # $(SHARD): filled by prometheus-config-reloader from the pod's environment (shard 0 of 1)
    config.write_text(
        yaml.safe_dump({"global": {"scrape_interval": "1h"}, "scrape_configs": configs}).replace(
            "$(SHARD)", "0"
        )
    )
    port = _free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(prometheus),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                with urlopen(f"http://127.0.0.1:{port}/api/v1/targets?state=any") as response:
                    data = json.load(response)["data"]
            except OSError:
                data = {"activeTargets": [], "droppedTargets": []}
            seen = len(data["activeTargets"]) + len(data["droppedTargets"])
            if seen >= sum(
                len(json.loads(Path(c["file_sd_configs"][0]["files"][0]).read_text()))
                for c in configs
            ):
                break
            assert time.monotonic() < deadline, f"Prometheus discovered {seen} targets"
            time.sleep(0.5)
    finally:
        _stop(proc)
    found: dict[str, dict[tuple[str, str], dict[str, str]]] = {j["job_name"]: {} for j in jobs}
    for target in data["activeTargets"]:
        meta = target["discoveredLabels"]
        key = (
            meta["__meta_kubernetes_pod_name"],
            meta["__meta_kubernetes_pod_container_port_name"],
        )
        found[target["scrapePool"]][key] = target["labels"]
    return found


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


def test_the_operator_loads_every_rule_and_monitor_of_the_defaults(
    cluster: Kube, operator: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    cluster.namespace("monitoring")
    cluster.apply(KPS_PROMETHEUS)
    applied = apply_profile(cluster, "observability")
    # a release labelled for another Prometheus: must not be selected
    others = apply_profile(cluster, "other-team", "--set", "prometheusRelease=other-stack")
    monitors = [d for d in applied if d["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert {m["metadata"]["name"] for m in monitors} == {
        "traintel-agent-metrics",
        "traintel-collectors",
    }
    for monitor in monitors:
        assert monitor["metadata"]["labels"].get("release") == KPS, monitor["metadata"]
    expected = {
        f"{'serviceMonitor' if m['kind'] == 'ServiceMonitor' else 'podMonitor'}/observability/"
        f"{m['metadata']['name']}/{i}"
        for m in monitors
        for i in range(len(m["spec"].get("endpoints") or m["spec"].get("podMetricsEndpoints")))
    }
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
    # (the profiles applied by the tests above are releases of their own, in their namespaces)
    ours = {name for name in jobs if "/observability/" in name}
    assert ours == expected, "every monitor of the release is scraped"
    assert not [name for name in jobs if "other-team" in name]
    assert jobs["podMonitor/observability/traintel-agent-metrics/0"]["honor_labels"] is True

    # What those jobs scrape, by a real Prometheus: the agents' training metrics from each agent
    # once, the collectors' own metrics from every agent and gateway, nothing of other-team's
    pods = operator_pods([d for d in applied + others if d["kind"] == "OpenTelemetryCollector"])
    targets = scraped(list(jobs.values()), pods, tmp_path)
    agents = sorted(
        p["name"] for p in pods if p["namespace"] == "observability" and "agent" in p["name"]
    )
    gateways = sorted(
        p["name"] for p in pods if p["namespace"] == "observability" and "gateway" in p["name"]
    )
    assert agents and gateways, pods
    training = targets["podMonitor/observability/traintel-agent-metrics/0"]
    assert sorted(training) == [(pod, "prom-export") for pod in agents]
    own = targets["podMonitor/observability/traintel-collectors/0"]
    assert sorted(own) == sorted((pod, OPERATOR_TELEMETRY_PORT) for pod in agents + gateways)
    # as compose names the collector's job: the alerts select it by job="otel-collector"
    assert {labels["job"] for labels in own.values()} == {"otel-collector"}
    # no endpoint is scraped by two jobs (each series would be stored twice)
    every = [key for found in targets.values() for key in found]
    assert len(every) == len(set(every)), every
