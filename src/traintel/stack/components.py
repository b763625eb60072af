"""The one table of the stack's programs: versions, how each is obtained, binaries, ports.

docker-compose.yml pins the same versions as image tags (``Component.image``), so what the
native test stack runs is what compose runs. Change a version here and in the compose file
together; ``traintel stack install`` rebuilds whatever changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The collector release: every v0.x collector module and the OCB builder use it; the confmap
#: providers use the paired stable v1.(N-94).0. Also the contrib image tag in docker-compose.yml.
OTELCOL_VERSION = "0.159.0"


@dataclass(frozen=True)
class Component:
    name: str
    #: the upstream release (what the compose image tag names)
    version: str
    #: "ocb": OpenTelemetry Collector Builder (``packages[0]``) with ``manifest``;
    #: "go-wrapper": ``go build`` of ``packages`` inside our wrapper module ``wrapper``
    #: (needed where upstream's go.mod has replace directives, which ``go install`` refuses);
    #: "go-module": ``go build`` inside a copy of ``module`` with ``extra_files`` added;
    #: "apt": Debian's packages ``apt`` (a tool that is no Go program);
    #: "npm": ``npm ci`` of the Node.js package in ``wrapper`` (a tool the tests use);
    #: "none": cannot be had on these machines, ``unavailable`` says why.
    method: str
    binaries: tuple[str, ...]
    #: container image pinned in docker-compose.yml ("" for a tool that is no service)
    image: str
    #: name -> port the program listens on in compose (and natively unless told otherwise)
    ports: dict[str, int]
    #: (port name, path) of the readiness endpoint (HTTP 200 when ready)
    ready: tuple[str, str] | None = None
    #: a failure of a required component fails ``traintel stack install``
    required: bool = True
    packages: tuple[str, ...] = ()
    module_version: str = ""
    manifest: str = ""
    wrapper: str = ""
    build_tags: str = ""
    #: Go variable that upstream's release build sets to the version (``--version``, buildinfo)
    version_var: str = ""
    #: hostnames under which the other programs reach this one in compose
    hosts: tuple[str, ...] = ()
    #: why a component is not obtainable here (method "none"), and how a user gets it instead
    unavailable: str = ""
    #: method "none": the environment variable naming a binary the user supplies (else the
    #: first of ``binaries`` on PATH is used); see ``traintel.stack.install.user_binary``
    bin_env: str = ""
    #: extra files (repo-relative) whose content is part of the build key
    inputs: tuple[str, ...] = field(default=())
    #: Debian packages providing ``binaries`` (older versions) when the Go build fails, and
    #: the Debian names of binaries that Debian renames
    apt: tuple[str, ...] = ()
    apt_names: dict[str, str] = field(default_factory=dict)
    #: for "go-module": the Go module of ``packages`` and files to add to its copy (path in the
    #: module -> content), for generated files that its module zip lacks
    module: str = ""
    extra_files: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Directory name under the cache's bin/: one per version, so versions coexist."""
        return f"{self.name}-{self.version}"


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component(
            name="otelcol",
            version=OTELCOL_VERSION,
            method="ocb",
            binaries=("traintel-otelcol",),
            image=f"otel/opentelemetry-collector-contrib:{OTELCOL_VERSION}",
            ports={
                "otlp_grpc": 4317,
                "otlp_http": 4318,
                "health": 13133,
                "metrics": 8888,
                "prom_exporter": 8889,
            },
            ready=("health", "/"),
            packages=("go.opentelemetry.io/collector/cmd/builder",),
            module_version=f"v{OTELCOL_VERSION}",
            manifest="otel-collector/builder-config.yaml",
            inputs=("otel-collector/builder-config.yaml",),
            hosts=("otel-collector", "otelcol", "collector"),
        ),
        Component(
            name="prometheus",
            version="3.14.0",
            method="go-wrapper",
            binaries=("prometheus", "promtool"),
            image="prom/prometheus:v3.14.0",
            ports={"web": 9090},
            ready=("web", "/-/ready"),
            packages=(
                "github.com/prometheus/prometheus/cmd/prometheus",
                "github.com/prometheus/prometheus/cmd/promtool",
            ),
            # Prometheus 3.x releases are Go module versions v0.3xx.y.
            module_version="v0.314.0",
            wrapper="stack/go/prometheus",
            inputs=("stack/go/prometheus/go.mod", "stack/go/prometheus/go.sum"),
            # We only scrape static targets: leave out the cloud/Kubernetes discovery SDKs.
            build_tags="remove_all_sd",
            version_var="github.com/prometheus/common/version.Version",
            hosts=("prometheus",),
            apt=("prometheus",),
        ),
        Component(
            name="alertmanager",
            version="0.34.0",
            method="go-module",
            binaries=("alertmanager", "amtool"),
            image="prom/alertmanager:v0.34.0",
            ports={"web": 9093},
            ready=("web", "/-/ready"),
            packages=(
                "github.com/prometheus/alertmanager/cmd/alertmanager",
                "github.com/prometheus/alertmanager/cmd/amtool",
            ),
            module_version="v0.34.0",
            # The web UI (ui/app/dist) is built by npm in Alertmanager's release process and is
            # not in the Go module, so `go install` fails on its go:embed. The API and amtool are
            # what the stack uses: build a copy of the module with a placeholder page instead.
            module="github.com/prometheus/alertmanager",
            version_var="github.com/prometheus/common/version.Version",
            extra_files={
                "ui/app/dist/index.html": (
                    "<!doctype html><title>Alertmanager</title><p>This Alertmanager was built "
                    "by traintel without its web UI. Use the API (/api/v2/alerts), amtool, or "
                    "Grafana.</p>\n"
                ),
            },
            hosts=("alertmanager",),
            apt=("prometheus-alertmanager",),
            apt_names={"alertmanager": "prometheus-alertmanager"},
        ),
        Component(
            name="loki",
            version="3.7.6",
            method="none",
            binaries=("loki",),
            image="grafana/loki:3.7.6",
            ports={"http": 3100, "grpc": 9095},
            ready=("http", "/ready"),
            required=False,
            hosts=("loki",),
            bin_env="TRAINTEL_LOKI_BIN",
            unavailable=(
                "Loki is AGPL-licensed: traintel never downloads or builds it. Put a Loki 3.7.6 "
                "release binary on PATH as `loki` or name it in TRAINTEL_LOKI_BIN "
                "(from Loki's GitHub releases), or run the compose file's grafana/loki image"
            ),
        ),
        Component(
            name="tempo",
            version="3.0.3",
            method="none",
            binaries=("tempo",),
            image="grafana/tempo:3.0.3",
            # In compose Tempo receives OTLP on 4317/4318 inside its own container; natively
            # those would clash with the collector's, so they get ports of their own.
            ports={"http": 3200, "grpc": 9096, "otlp_grpc": 4317, "otlp_http": 4318},
            ready=("http", "/ready"),
            required=False,
            hosts=("tempo",),
            bin_env="TRAINTEL_TEMPO_BIN",
            unavailable=(
                "Tempo is AGPL-licensed: traintel never downloads or builds it. Put a Tempo 3.0.3 "
                "release binary on PATH as `tempo` or name it in TRAINTEL_TEMPO_BIN "
                "(from Tempo's GitHub releases), or run the compose file's grafana/tempo image"
            ),
        ),
        Component(
            name="grafana",
            version="13.2.0",
            method="none",
            binaries=("grafana",),
            image="grafana/grafana:13.2.0",
            ports={"http": 3000},
            ready=("http", "/api/health"),
            required=False,
            hosts=("grafana",),
            bin_env="TRAINTEL_GRAFANA_BIN",
            unavailable=(
                "Grafana is AGPL-licensed: traintel never downloads or builds it. Unpack a Grafana "
                "13.2.0 release (grafana.com/grafana/download) and name its bin/grafana in "
                "TRAINTEL_GRAFANA_BIN (or put it on PATH), or run the compose file's "
                "grafana/grafana image"
            ),
        ),
        Component(
            name="logql",
            version="0.4.2",
            method="npm",
            # check.mjs parses LogQL with @grafana/lezer-logql (Apache-2.0), the grammar Grafana's
            # Loki query editor uses: the tests check every LogQL query of the dashboards, alert
            # docs and data source links with it. Not a service: no image, no ports.
            binaries=("check.mjs",),
            image="",
            ports={},
            required=False,
            wrapper="tools/logql",
            inputs=(
                "tools/logql/package.json",
                "tools/logql/package-lock.json",
                "tools/logql/check.mjs",
            ),
        ),
    )
}


#: Programs that check the deployment files in deploy/ (the Helm chart, the Kubernetes and SLURM
#: examples). Built by the same installer as the stack, but on demand (``install(names,
#: table=DEPLOY_TOOLS)``, called by the tests that need them), not by ``traintel stack install``:
#: they are not part of the stack. Helm and kubeconform are Apache-2.0 Go programs, built from
#: their modules; compose-check is ours (stack/go/compose-check) around compose-go; shellcheck
#: (for deploy/slurm) is Debian's package.
DEPLOY_TOOLS: dict[str, Component] = {
    c.name: c
    for c in (
        Component(
            name="helm",
            version="4.3.1",
            method="go-module",
            binaries=("helm",),
            image="",
            ports={},
            required=False,
            module="helm.sh/helm/v4",
            module_version="v4.3.1",
            packages=("helm.sh/helm/v4/cmd/helm",),
        ),
        Component(
            name="kubeconform",
            version="0.8.0",
            method="go-module",
            binaries=("kubeconform",),
            image="",
            ports={},
            required=False,
            module="github.com/yannh/kubeconform",
            module_version="v0.8.0",
            packages=("github.com/yannh/kubeconform/cmd/kubeconform",),
            version_var="main.version",
        ),
        Component(
            # `docker compose config` without Docker: compose-go (Apache-2.0), the loader Docker
            # Compose is built on, checks `traintel stack init`'s project (schema, .env).
            name="compose-check",
            version="2.16.2",
            method="go-wrapper",
            binaries=("compose-check",),
            image="",
            ports={},
            required=False,
            packages=(".",),
            module_version="v2.16.2",
            wrapper="stack/go/compose-check",
            inputs=(
                "stack/go/compose-check/go.mod",
                "stack/go/compose-check/go.sum",
                "stack/go/compose-check/main.go",
            ),
        ),
        Component(
            # A real Kubernetes API server for the tests that apply the chart and the job
            # examples (tests/kube_fixture.py): kube-apiserver v1.36.3 and the etcd v3.6.8 it
            # requires, through our wrapper module (Kubernetes' go.mod replaces its staging
            # modules with local paths, which `go install` refuses). Apache-2.0 both.
            name="kube",
            version="1.36.3",
            method="go-wrapper",
            binaries=("kube-apiserver", "etcd"),
            image="",
            ports={},
            required=False,
            packages=("k8s.io/kubernetes/cmd/kube-apiserver", "./etcd"),
            module_version="v1.36.3",
            wrapper="stack/go/kube",
            inputs=("stack/go/kube/go.mod", "stack/go/kube/go.sum", "stack/go/kube/etcd/main.go"),
        ),
        Component(
            # The Prometheus Operator, run against that API server with --kubeconfig
            # (tests/test_kube_cluster.py). v0.85.0: the Go proxy refuses the pkg/client module
            # of later releases (stack/go/prometheus-operator/go.mod says which).
            name="prometheus-operator",
            version="0.85.0",
            method="go-wrapper",
            binaries=("operator",),
            image="",
            ports={},
            required=False,
            packages=("github.com/prometheus-operator/prometheus-operator/cmd/operator",),
            module_version="v0.85.0",
            wrapper="stack/go/prometheus-operator",
            inputs=("stack/go/prometheus-operator/go.mod", "stack/go/prometheus-operator/go.sum"),
            version_var="github.com/prometheus/common/version.Version",
        ),
        Component(
            # Thanos (Apache-2.0): Receive in a hashring, Query and Ruler, for the test that
            # writes a run into a clustered TSDB (tests/test_thanos.py); a wrapper module repeats
            # its go.mod's replace block, which `go install` refuses.
            name="thanos",
            version="0.42.4",
            method="go-wrapper",
            binaries=("thanos",),
            image="",
            ports={},
            required=False,
            packages=("github.com/thanos-io/thanos/cmd/thanos",),
            module_version="v0.42.4",
            wrapper="stack/go/thanos",
            inputs=("stack/go/thanos/go.mod", "stack/go/thanos/go.sum"),
            # as Thanos' release build (.promu.yml): its zero-copy label conversions assume
            # Prometheus's slice labels; without the tag Query and Receive panic on the first
            # label set they exchange
            build_tags="slicelabels",
            version_var="github.com/prometheus/common/version.Version",
        ),
        Component(
            name="shellcheck",
            version="0.9.0",
            method="apt",
            binaries=("shellcheck",),
            image="",
            ports={},
            required=False,
            apt=("shellcheck",),
        ),
    )
}
