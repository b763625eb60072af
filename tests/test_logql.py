"""Every LogQL query traintel ships (dashboards, annotations, docs, the Tempo-to-Loki link) is
parsed by Grafana's own LogQL grammar, and its stream selector uses only labels that Loki's
documented default OTLP mapping plus loki/loki.yaml make index labels. (That the label filters
name fields our logs really carry, and that each panel selects a real run's lines, is checked on
what the collector sends: tests/test_end_to_end.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from loki_model import INDEX_LABELS, label_name, parse
from traintel.stack import dashboards

REPO = Path(__file__).resolve().parents[1]
#: a trace id where Grafana would put ${__trace.traceId}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def shipped_queries() -> dict[str, str]:
    """Every LogQL query, by where it comes from; Grafana variables filled in as Grafana would."""
    out = {}
    for q in dashboards.queries():
        if q.datasource == "loki":
            out[f"{q.dashboard}: {q.kind} {q.title}"] = dashboards.expand(q.expr)
    for path in sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")]):
        blocks = re.findall(r"```logql\n(.*?)```", path.read_text(), re.DOTALL)
        for n, line in enumerate(line for b in blocks for line in b.splitlines() if line.strip()):
            out[f"{path.relative_to(REPO)} #{n + 1}"] = line
    sources = yaml.safe_load(
        (REPO / "grafana/provisioning/datasources/datasources.yaml").read_text()
    )["datasources"]
    for source in sources:
        query = source.get("jsonData", {}).get("tracesToLogsV2", {}).get("query")
        if query:  # `$$` is provisioning's escaped `$`
            out[f"datasources.yaml: {source['name']} traces to logs"] = query.replace(
                "$$", "$"
            ).replace("${__trace.traceId}", TRACE_ID)
    return out


QUERIES = shipped_queries()


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict]:
    return dict(zip(QUERIES, parse(list(QUERIES.values()))))


def test_queries_are_found_in_every_place() -> None:
    places = {key.split(":")[0].split(" #")[0] for key in QUERIES}
    assert {"errors-and-logs", "datasources.yaml", "docs/stack.md"} <= places, places
    assert len(QUERIES) >= 10


@pytest.mark.parametrize("where", QUERIES)
def test_query_parses_with_grafanas_logql_grammar(parsed, where: str) -> None:
    assert parsed[where]["errors"] == [], f"{QUERIES[where]!r}: {parsed[where]['errors']}"
    assert [m for m in parsed[where]["matchers"] if m["in"] == "selector"], "no stream selector"


@pytest.mark.parametrize("where", QUERIES)
def test_stream_selector_uses_only_index_labels(parsed, where: str) -> None:
    used = {m["label"] for m in parsed[where]["matchers"] if m["in"] == "selector"}
    assert used <= INDEX_LABELS, (
        f"{sorted(used - INDEX_LABELS)} are not index labels in Loki (structured metadata is "
        'filtered after the selector: `| name="value"`)'
    )


def test_the_checks_can_fail() -> None:
    """A broken query reports an error; a structured-metadata field in a selector is caught."""
    broken, on_metadata = parse(
        ['{service_name="traintel" | run="x"', '{service_name="traintel", rank="0"}']
    )
    assert broken["errors"]
    assert {m["label"] for m in on_metadata["matchers"]} - INDEX_LABELS == {"rank"}


def test_index_labels_follow_the_documented_mapping() -> None:
    assert {"service_name", "service_instance_id", "k8s_pod_name", "project", "run"} <= INDEX_LABELS
    assert not {"rank", "host_name", "severity_text", "trace_id"} & INDEX_LABELS
    assert label_name("service.instance.id") == "service_instance_id"
