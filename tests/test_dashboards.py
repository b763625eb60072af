"""The Grafana dashboards: generated from code, built on known metrics and provisioned data sources,
and every query accepted by the real Prometheus and Loki."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from stack_fixture import committed_rules
from traintel.core import catalog
from traintel.stack import dashboards, rules
from traintel.stack.native import NativeStack

REPO = Path(__file__).resolve().parents[1]

#: The collector's own metrics the rules read, as collector v0.159.0 exposes them on :8888 with
#: the reader of otel-collector/config.yaml: the OTel instrument names, no `_total` suffix.
COLLECTOR_METRICS = {
    f"otelcol_exporter_{what}_{signal}"
    for what in ("send_failed", "enqueue_failed", "sent")
    for signal in ("metric_points", "log_records", "spans")
} | {
    "otelcol_exporter_queue_size",
    "otelcol_exporter_queue_capacity",
    "otelcol_process_uptime",
}  # StackComponentRestarting (test_stack_native checks the name)

#: What the collector's spanmetrics connector makes of traces (namespace traces.span.metrics).
SPAN_METRICS = {"traces_span_metrics_calls_total"} | {
    f"traces_span_metrics_duration_seconds_{part}" for part in ("bucket", "sum", "count")
}

#: A metric name in PromQL: traintel's, recording rules (traintel:...:...) and the collector's.
METRIC_NAME = re.compile(
    r'(?<![\w:"])(traintel:\w+:\w+|traintel_\w+|otelcol_\w+|traces_span_metrics_\w+)'
)
#: Label names in matchers and in by/on/without/group_left/group_right clauses.
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|on|without|group_left|group_right)\s*\(([^)]*)\)")
#: Labels Prometheus, the collector and Alertmanager add, besides the catalog's (`integration`:
#: Alertmanager's notification metrics, read by AlertmanagerNotificationsFailing).
OTHER_LABELS = {
    "job",
    "instance",
    "le",
    "exporter",
    "data_type",
    "__name__",
    "span_name",
    "integration",
}
#: dcgm-exporter's spelling of the GPU labels: its series, and traintel:gpu_run:info that joins them
OTHER_LABELS |= set(rules.DCGM_SPELLING.values())

BOARDS = dashboards.build()
QUERIES = dashboards.queries(BOARDS)


def _promql() -> list[str]:
    return [q.expr for q in QUERIES if q.datasource == "prometheus"] + [
        r["expr"] for r in committed_rules()
    ]


def test_committed_dashboards_are_generated_from_code() -> None:
    committed = {p.stem: p.read_text() for p in dashboards.DEFAULT_DIR.glob("*.json")}
    assert sorted(committed) == sorted(BOARDS), "run `make generate`"
    for name, data in BOARDS.items():
        assert committed[name] == dashboards.render(data), (
            f"grafana/dashboards/{name}.json is stale: run `make generate`"
        )


def test_dashboards_are_at_the_schema_version_of_the_pinned_grafana() -> None:
    """Grafana 13.2 (docker-compose.yml) reads classic dashboard JSON up to schemaVersion 42."""
    assert "grafana/grafana:13.2." in (REPO / "docker-compose.yml").read_text()
    assert (
        {data["schemaVersion"] for data in BOARDS.values()} == {dashboards.SCHEMA_VERSION} == {42}
    )


def test_metric_names_exist() -> None:
    known = {name for metric in catalog.METRICS for name in catalog.prometheus_series_names(metric)}
    known |= {rule["record"] for rule in committed_rules() if "record" in rule}
    known |= COLLECTOR_METRICS | SPAN_METRICS
    unknown = {name for expr in _promql() for name in METRIC_NAME.findall(expr)} - known
    assert unknown == set(), "not in traintel.core.catalog, the recording rules or the collector's"


def test_label_names_exist() -> None:
    known = set(catalog.BASE_LABELS) | OTHER_LABELS
    known |= {label for metric in catalog.METRICS for label in metric.labels}
    used = set()
    for expr in _promql():
        used |= set(MATCHER.findall(expr))
        for group in GROUPING.findall(expr):
            used |= {label.strip() for label in group.split(",") if label.strip()}
    assert used - known == set()


def test_every_datasource_is_provisioned() -> None:
    provisioned = yaml.safe_load(
        (REPO / "grafana/provisioning/datasources/datasources.yaml").read_text()
    )["datasources"]
    uids = {source["uid"] for source in provisioned}
    for name, data in BOARDS.items():
        for panel in data["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == panel["datasource"]["uid"], panel["title"]
    assert {q.datasource for q in QUERIES} <= uids
    text = (REPO / "grafana/provisioning/datasources/datasources.yaml").read_text()
    assert set(re.findall(r"datasourceUid: (\w+)", text)) <= uids  # links between data sources


def test_every_panel_has_a_query_and_a_unique_id() -> None:
    for name, data in BOARDS.items():
        panels = [p for p in data["panels"] if p["type"] != "row"]
        assert all(p["targets"] for p in panels), name
        ids = [p["id"] for p in data["panels"]]
        assert len(ids) == len(set(ids)), name


def test_expand_fills_variables_like_grafana() -> None:
    expr = 'rate(x{run=~"$run", rank=~"${rank}"}[$__rate_interval]) |~ "$search"'
    assert (
        dashboards.expand(expr, {"run": "r1"})
        == f'rate(x{{run=~"r1", rank=~".*"}}[{dashboards.BUILTINS["__rate_interval"]}]) |~ ""'
    )


# --- against the real programs ------------------------------------------------------------------


def _get(url: str, **params: str) -> dict:
    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(params)}", timeout=30) as reply:
        return json.load(reply)


@pytest.mark.stack
@pytest.mark.parametrize(
    "query",
    [q for q in QUERIES if q.datasource == "prometheus"],
    ids=lambda q: f"{q.dashboard}:{q.kind}:{q.title}",
)
def test_prometheus_accepts_query(stack: NativeStack, query: dashboards.Query) -> None:
    base = stack.endpoints["prometheus"]
    if query.kind == "variable":
        selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", query.expr).groups()
        reply = _get(
            f"{base}/api/v1/label/{label}/values", **{"match[]": dashboards.expand(selector)}
        )
    else:
        reply = _get(f"{base}/api/v1/query", query=dashboards.expand(query.expr))
    assert reply["status"] == "success"


@pytest.mark.stack("loki")
@pytest.mark.parametrize(
    "query",
    [q for q in QUERIES if q.datasource == "loki"],
    ids=lambda q: f"{q.dashboard}:{q.kind}:{q.title}",
)
def test_loki_accepts_query(stack: NativeStack, query: dashboards.Query) -> None:
    reply = _get(
        f"{stack.endpoints['loki']}/loki/api/v1/query_range",
        query=dashboards.expand(query.expr),
        limit="10",
    )
    assert reply["status"] == "success"


@pytest.mark.stack
def test_collector_exposes_its_metrics_as_the_rules_expect(stack: NativeStack) -> None:
    """The queue gauges exist and counters keep their instrument names (no `_total`)."""
    with urllib.request.urlopen(f"{stack.endpoints['collector_metrics']}/metrics", timeout=30) as r:
        text = r.read().decode()
    types = dict(re.findall(r"^# TYPE (otelcol_\w+) (\w+)", text, re.MULTILINE))
    assert {"otelcol_exporter_queue_size", "otelcol_exporter_queue_capacity"} <= set(types)
    counters = {name for name, kind in types.items() if kind == "counter"}
    assert "otelcol_process_uptime" in counters, sorted(counters)  # not ..._seconds_total
    sent = {
        n for n in counters if re.match(r"otelcol_exporter_(sent|send_failed|enqueue_failed)_", n)
    }
    assert sent <= COLLECTOR_METRICS, sent - COLLECTOR_METRICS
