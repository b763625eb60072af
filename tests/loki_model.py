"""What Loki 3.7 makes of the OTLP logs our collector sends it, and LogQL evaluated over that.

No Loki can be run here (AGPL), so the logs path is proven in two halves: the sink collector
shows exactly what our collector sends to Loki's OTLP endpoint, and this module applies Loki's
*documented* OTLP mapping to those records (index labels from the default list plus our
``otlp_config`` in loki/loki.yaml, everything else structured metadata, the record's own fields
by the names Loki gives them). LogQL is parsed by Grafana's own grammar (tools/logql, installed
by ``traintel stack install``); :func:`selects` evaluates the parsed stream selector and
label/line filter stages, which is all traintel's queries use.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from traintel.stack import install

REPO = Path(__file__).resolve().parents[1]

#: Loki 3.7.6, "Default labels for OpenTelemetry" (docs/sources/get-started/labels/_index.md at
#: tag v3.7.6): the resource attributes stored as index labels, dots replaced by underscores.
DOCUMENTED_INDEX_ATTRIBUTES = frozenset(
    {
        "cloud.availability_zone",
        "cloud.region",
        "container.name",
        "deployment.environment.name",
        "k8s.cluster.name",
        "k8s.container.name",
        "k8s.cronjob.name",
        "k8s.daemonset.name",
        "k8s.deployment.name",
        "k8s.job.name",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.replicaset.name",
        "k8s.statefulset.name",
        "service.instance.id",
        "service.name",
        "service.namespace",
    }
)
#: The same release's code (pkg/loghttp/push/otlp_config.go) also indexes the older
#: ``deployment.environment``, which the page omits: counted too, since Loki does it.
CODE_ONLY_INDEX_ATTRIBUTES = frozenset({"deployment.environment"})

#: Fields of a log record that Loki 3.7 stores as structured metadata (pkg/loghttp/push/otlp.go),
#: by their OTLP JSON name; scope name and version come from the scope.
RECORD_FIELDS = {
    "severityText": "severity_text",
    "severityNumber": "severity_number",
    "traceId": "trace_id",
    "spanId": "span_id",
    "flags": "flags",
    "observedTimeUnixNano": "observed_timestamp",
    "droppedAttributesCount": "dropped_attributes_count",
}


def our_index_attributes() -> frozenset[str]:
    """Resource attributes loki/loki.yaml adds as index labels (``otlp_config``)."""
    config = yaml.safe_load((REPO / "loki/loki.yaml").read_text())
    rules = (
        config.get("limits_config", {})
        .get("otlp_config", {})
        .get("resource_attributes", {})
        .get("attributes_config", [])
    )
    return frozenset(
        a
        for rule in rules
        if rule.get("action") == "index_label"
        for a in rule.get("attributes", [])
    )


INDEX_ATTRIBUTES = DOCUMENTED_INDEX_ATTRIBUTES | CODE_ONLY_INDEX_ATTRIBUTES | our_index_attributes()


def label_name(key: str) -> str:
    """An OTLP attribute key as a Loki label name (Prometheus label rules: invalid -> '_')."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    return f"key_{name}" if name[:1].isdigit() else name


INDEX_LABELS = frozenset(label_name(a) for a in INDEX_ATTRIBUTES)


@dataclass
class Entry:
    """One log line as Loki would store it."""

    labels: dict[str, str]  # the stream's index labels
    metadata: dict[str, str]  # structured metadata
    line: str

    @property
    def fields(self) -> dict[str, str]:
        return {**self.metadata, **self.labels}


def _value(value: dict) -> str:
    ((kind, raw),) = value.items() if value else (("stringValue", ""),)
    if kind in ("arrayValue", "kvlistValue"):
        return json.dumps(raw, separators=(",", ":"))
    if kind == "boolValue":
        return "true" if raw else "false"
    return str(raw)


def _attributes(items: list[dict]) -> dict[str, str]:
    return {item["key"]: _value(item.get("value", {})) for item in items or []}


def entries(sink_file: Path) -> list[Entry]:
    """Every log record in the sink's file (OTLP JSON lines), mapped as Loki maps OTLP."""
    out = []
    lines = sink_file.read_text().splitlines() if sink_file.exists() else []
    for text in lines:
        for resource_logs in json.loads(text).get("resourceLogs", []):
            resource = _attributes(resource_logs.get("resource", {}).get("attributes", []))
            labels = {label_name(k): v for k, v in resource.items() if k in INDEX_ATTRIBUTES}
            base = {label_name(k): v for k, v in resource.items() if k not in INDEX_ATTRIBUTES}
            for scope_logs in resource_logs.get("scopeLogs", []):
                scope = scope_logs.get("scope", {})
                scoped = {
                    **base,
                    **{f"scope_{k}": scope[k] for k in ("name", "version") if scope.get(k)},
                }
                for record in scope_logs.get("logRecords", []):
                    metadata = {
                        **scoped,
                        **{
                            label_name(k): v
                            for k, v in _attributes(record.get("attributes")).items()
                        },
                    }
                    for field, name in RECORD_FIELDS.items():
                        if record.get(field) not in (None, "", 0):
                            metadata[name] = str(record[field])
                    out.append(Entry(labels, metadata, _value(record.get("body", {}))))
    return out


def parse(queries: list[str]) -> list[dict]:
    """Each query parsed by Grafana's LogQL grammar (tools/logql/check.mjs)."""
    reason = install.missing_reason("logql")
    if reason:
        pytest.skip(reason)
    if not shutil.which("node"):
        pytest.skip("node is not on PATH (Node.js runs the LogQL grammar)")
    result = subprocess.run(
        ["node", str(install.binary("logql", "check.mjs"))],
        input=json.dumps(queries),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def _match(op: str, pattern: str, value: str) -> bool:
    if op in ("=", "!="):
        return (value == pattern) == (op == "=")
    return bool(re.fullmatch(pattern, value, re.DOTALL)) == (op == "=~")  # anchored, like Loki


def _tree(tree: dict, fields: dict[str, str]) -> bool:
    if "or" in tree:
        return any(_tree(t, fields) for t in tree["or"])
    if "and" in tree:
        return all(_tree(t, fields) for t in tree["and"])
    if "matcher" in tree:
        m = tree["matcher"]
        return _match(m["op"], m["value"], fields.get(m["label"], ""))
    raise AssertionError(f"a pipeline stage this model cannot evaluate: {tree}")


def _line(op: str, pattern: str, line: str) -> bool:
    if op in ("|=", "!="):
        return (pattern in line) == (op == "|=")
    if op in ("|~", "!~"):
        return bool(re.search(pattern, line)) == (op == "|~")
    raise AssertionError(f"a line filter this model cannot evaluate: {op}")


def selects(parsed: dict, entry: Entry) -> bool:
    """Whether the parsed query's log selector (the inner one of a metric query) keeps ``entry``."""
    selector = [m for m in parsed["matchers"] if m["in"] == "selector"]
    if not all(_match(m["op"], m["value"], entry.labels.get(m["label"], "")) for m in selector):
        return False
    for stage in parsed["stages"]:
        if "label" in stage and not _tree(stage["label"], entry.fields):
            return False
        if "line" in stage and not all(
            _line(f["op"], f["value"], entry.line) for f in stage["line"]
        ):
            return False
        if "other" in stage:
            raise AssertionError(f"a pipeline stage this model cannot evaluate: {stage}")
    return True
