"""The metric catalog follows Prometheus naming and renders the committed reference doc."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from traintel import catalog
from traintel.export.readings import WINDOWED, readers

ROOT = Path(__file__).resolve().parents[1]
UNIT_SUFFIX = {"s": "_seconds", "By": "_bytes", "W": "_watts", "J": "_joules",
               "Cel": "_celsius", "Hz": "_hertz", "1": "_ratio", "By/s": "_bytes_per_second"}


@pytest.mark.parametrize("metric", catalog.METRICS, ids=lambda m: m.name)
def test_prometheus_naming(metric):
    assert re.fullmatch(r"traintel_[a-z0-9_]+", metric.name)
    if metric.kind == "counter":
        assert metric.name.endswith("_total")
    else:
        assert not metric.name.endswith("_total")
    if metric.unit:
        stem = metric.name.removesuffix("_total")
        assert stem.endswith(UNIT_SUFFIX[metric.unit]), (metric.name, metric.unit)
    assert metric.description.endswith(".")
    assert not set(metric.labels) & set(catalog.BASE_LABELS)


def test_every_metric_has_a_reader_or_is_added_per_export():
    table = readers({"run_name": "n", "host": "h", "world_size": "1"})
    for metric in catalog.METRICS:
        added_per_export = metric.kind == "histogram" or metric.name in WINDOWED
        assert (metric.name in table) != added_per_export, metric.name


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(KeyError, match="must be declared in traintel.catalog.METRICS"):
        catalog.get("traintel_nope")


def test_metrics_doc_is_generated_from_the_catalog():
    committed = (ROOT / "docs" / "metrics.md").read_text()
    assert committed == catalog.render_markdown(), "run `traintel docs metrics > docs/metrics.md`"
