"""One collector pipeline: otel-collector/config.yaml is the source of every tier's.

The Helm chart's gateway and first tier (agent or sidecar) and the SLURM node collector are
rendered from it by ``make generate`` (traintel.stack.deploy); the collector version comes from
traintel.stack.components everywhere. Checked here against the chart as Helm renders it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy_tools import CHART, REPO, chart_collectors
from traintel.stack import deploy
from traintel.stack.components import COMPONENTS, OTELCOL_VERSION

SOURCE = yaml.safe_load((REPO / "otel-collector/config.yaml").read_text())
#: what a tier may change of a source processor, and why (the rest must be the source's)
OVERRIDES = {
    # in a pod: a share of the container's memory limit, not the native collector's MiB
    "memory_limiter": {
        "check_interval",
        "limit_mib",
        "spike_limit_mib",
        "limit_percentage",
        "spike_limit_percentage",
    },
    # the first tier carries one node's ranks: smaller batches
    "batch": {"send_batch_size"},
}
PROFILES = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))


def collectors(profile: str) -> dict[str, dict[str, Any]]:
    """name -> config of every OpenTelemetryCollector the chart renders for ``profile``."""
    return {d["metadata"]["name"]: d for d in chart_collectors(profile)}


def test_the_generated_files_are_current() -> None:
    assert deploy.stale(REPO) == [], "run `make generate`"


def test_no_link_in_the_chart() -> None:
    links = [str(p.relative_to(REPO)) for p in CHART.rglob("*") if p.is_symlink()]
    assert links == []


@pytest.mark.parametrize("profile", PROFILES)
def test_every_tier_runs_the_sources_processors(profile: str) -> None:
    """Each processor and connector a tier has is the source's, save the overrides above; each
    pipeline's processors come in the source's order; the gateway bounds log attributes for
    Loki (transform/loki_limits) and the first tier computes span metrics with exemplars."""
    found = collectors(profile)
    assert found
    for name, cr in found.items():
        config = cr["spec"]["config"]
        for kind in ("processors", "connectors"):
            for component, settings in config.get(kind, {}).items():
                source = SOURCE[kind][component]
                allowed = OVERRIDES.get(component, set())
                differ = {
                    k for k in set(source) | set(settings) if source.get(k) != settings.get(k)
                }
                assert differ <= allowed, (profile, name, component, differ)
        for signal, pipeline in config["service"]["pipelines"].items():
            order = SOURCE["service"]["pipelines"][signal]["processors"]
            assert pipeline["processors"] == [p for p in order if p in pipeline["processors"]]
        if cr["spec"]["mode"] in ("daemonset", "sidecar"):
            assert config["connectors"]["span_metrics"] == SOURCE["connectors"]["span_metrics"]
            assert config["connectors"]["span_metrics"]["exemplars"]["enabled"] is True
        if "otlp_http/loki" in config["exporters"]:
            assert (
                config["service"]["pipelines"]["logs"]["processors"]
                == (SOURCE["service"]["pipelines"]["logs"]["processors"])
            )
            assert "transform/loki_limits" in config["service"]["pipelines"]["logs"]["processors"]


def test_the_slurm_node_collector_is_the_sources_forwarder() -> None:
    node = yaml.safe_load((REPO / deploy.SLURM_NODE).read_text())
    assert node["processors"]["memory_limiter"] == SOURCE["processors"]["memory_limiter"]
    assert node["processors"]["batch"]["timeout"] == SOURCE["processors"]["batch"]["timeout"]
    for signal, pipeline in node["service"]["pipelines"].items():
        assert pipeline["processors"] == [
            p
            for p in SOURCE["service"]["pipelines"][signal]["processors"]
            if p in node["processors"]
        ]


@pytest.mark.parametrize("profile", PROFILES)
def test_the_collector_version_is_the_one_in_components(profile: str) -> None:
    image = f"otel/opentelemetry-collector-contrib:{OTELCOL_VERSION}"
    assert COMPONENTS["otelcol"].image == image
    assert {cr["spec"]["image"] for cr in collectors(profile).values()} == {image}
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["annotations"]["traintel.dev/collector-image"] == image
    sbatch = (REPO / "deploy/slurm/train.sbatch").read_text()
    assert f".cache/traintel/bin/otelcol-{OTELCOL_VERSION}/" in sbatch
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert image in {s.get("image") for s in compose["services"].values()}


def _copy_sources(root: Path) -> None:
    for rel in (
        "otel-collector/config.yaml",
        "prometheus/rules",
        "grafana/dashboards",
        "deploy/slurm",
        "deploy/helm/traintel",
    ):
        source, target = REPO / rel, root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)


def test_a_source_change_or_a_hand_edit_makes_them_stale(tmp_path: Path) -> None:
    _copy_sources(tmp_path)
    assert deploy.stale(tmp_path) == []
    # a processor added to the source's logs pipeline reaches the chart's gateway and SLURM node
    source = yaml.safe_load((tmp_path / deploy.SOURCE).read_text())
    source["processors"]["batch"]["timeout"] = "2s"
    source["connectors"]["span_metrics"]["exemplars"]["enabled"] = False
    (tmp_path / deploy.SOURCE).write_text(yaml.safe_dump(source))
    assert set(deploy.stale(tmp_path)) == {
        f"{deploy.CHART}/files/collector/gateway.yaml",
        f"{deploy.CHART}/files/collector/forwarder.yaml",
        deploy.SLURM_NODE,
    }
    deploy.write(tmp_path)
    forwarder = yaml.safe_load(
        (tmp_path / deploy.CHART / "files/collector/forwarder.yaml").read_text()
    )
    assert forwarder["connectors"]["span_metrics"]["exemplars"]["enabled"] is False
    assert forwarder["processors"]["batch"]["timeout"] == "2s"
    assert deploy.stale(tmp_path) == []
    # a hand-edited version pin, a copied rule edited, a link in place of a copy
    values = tmp_path / deploy.CHART / "values.yaml"
    values.write_text(values.read_text().replace(OTELCOL_VERSION, "0.150.0"))
    rule = next((tmp_path / deploy.CHART / "files/rules").glob("*.yml"))
    rule.write_text(rule.read_text() + "\n")
    dashboards = tmp_path / deploy.CHART / "files/dashboards"
    shutil.rmtree(dashboards)
    dashboards.symlink_to(tmp_path / "grafana/dashboards")
    stale = deploy.stale(tmp_path)
    assert f"{deploy.CHART}/values.yaml" in stale
    assert f"{deploy.CHART}/files/rules/{rule.name}" in stale
    assert f"{deploy.CHART}/files/dashboards" in stale
    deploy.write(tmp_path)
    assert deploy.stale(tmp_path) == []
    assert not dashboards.is_symlink() and OTELCOL_VERSION in values.read_text()
