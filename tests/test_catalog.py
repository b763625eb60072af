"""The metric catalog follows Prometheus naming and renders the committed reference doc."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from traintel.core import catalog
from traintel.export.readings import WINDOWED, readers

ROOT = Path(__file__).resolve().parents[1]
UNIT_SUFFIX = {
    "s": "_seconds",
    "By": "_bytes",
    "W": "_watts",
    "J": "_joules",
    "Cel": "_celsius",
    "Hz": "_hertz",
    "1": "_ratio",
    "By/s": "_bytes_per_second",
}


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
    if metric.name.endswith("_per_second"):  # a rate says its unit, in the docs at least
        assert (metric.unit or metric.doc_unit).endswith("/s"), metric.name
    assert metric.description.endswith(".")
    assert not set(metric.labels) & set(catalog.BASE_LABELS)


def test_every_metric_has_a_reader_or_is_added_per_export():
    table = readers({"run_name": "n", "hostname": "h", "world_size": "1"})
    for metric in catalog.METRICS:
        added_per_export = metric.kind == "histogram" or metric.name in WINDOWED
        assert (metric.name in table) != added_per_export, metric.name


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(KeyError, match="must be declared in traintel.core.catalog.METRICS"):
        catalog.get("traintel_nope")


def test_metrics_doc_is_generated_from_the_catalog():
    committed = (ROOT / "docs" / "metrics.md").read_text()
    assert committed == catalog.render_markdown(), "run `traintel docs metrics > docs/metrics.md`"


def _semantic_conventions() -> dict[str, tuple[str, str]]:
    """Every metric the installed semantic-conventions package defines: name -> (instrument,
    unit), read from the docstring under each constant (``Instrument: gauge`` / ``Unit: By``)."""
    import importlib
    import inspect
    import pkgutil

    import opentelemetry.semconv._incubating.metrics as incubating
    import opentelemetry.semconv.metrics as stable

    found = {}
    for package in (incubating, stable):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            body = ast.parse(inspect.getsource(module)).body
            for node, after in zip(body, body[1:]):
                if (
                    isinstance(node, ast.AnnAssign)
                    and isinstance(node.value, ast.Constant)
                    and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                ):
                    doc = str(after.value.value)
                    kind = re.search(r"^Instrument: (\w+)$", doc, re.MULTILINE)
                    unit = re.search(r"^Unit: (\S+)$", doc, re.MULTILINE)
                    if kind and unit:
                        found[str(node.value.value)] = (kind.group(1), unit.group(1))
    return found


def test_every_metric_names_its_semantic_convention_or_none():
    conventions = _semantic_conventions()
    assert len(conventions) > 200 and "process.cpu.utilization" in conventions
    # Prometheus kinds an OTel instrument may become
    kinds = {
        "counter": {"counter"},
        "gauge": {"gauge"},
        "updowncounter": {"updowncounter"},
        "histogram": {"histogram"},
    }
    for metric in catalog.METRICS:
        assert metric.semconv, metric.name
        if metric.group == "gpu":
            assert metric.dcgm, f"{metric.name}: name its dcgm-exporter field, or 'none'"
        if metric.semconv == "none":
            continue
        assert metric.semconv in conventions, f"{metric.name}: no convention {metric.semconv}"
        kind, unit = conventions[metric.semconv]
        assert kind in kinds[metric.kind], (metric.name, metric.semconv, kind)
        # dimensionless: "" here, "1" or an annotation such as "{error}" there
        dimensionless = {"", "1"} | ({unit} if unit.startswith("{") else set())
        assert metric.unit == unit or {metric.unit, unit} <= dimensionless, (
            metric.name,
            metric.unit,
            metric.semconv,
            unit,
        )


def test_no_metric_name_carries_its_type():
    """promtool's lint: a name must not say what type it is (``_counter``, ``_gauge``, ...)."""
    for metric in catalog.METRICS:
        assert not re.search(rf"_{metric.kind}(_|$)", metric.name), metric.name


def test_the_tables_of_logged_keys_derive_from_the_catalog(monkeypatch) -> None:
    """One declaration per metric: a catalog entry with ``keys`` is all the state, the exporters,
    the integrations and the capacity calculator need to know a run.log key (CONTRIBUTING.md)."""
    import dataclasses

    from traintel.core import state
    from traintel.export import readings
    from traintel.integrations import base
    from traintel.stack import capacity

    with_keys = [m for m in catalog.METRICS if m.keys]
    assert {key: m.name for m in with_keys for key in m.keys} == state.KNOWN_KEYS
    assert base.KNOWN == {key: m.keys[0] for m in with_keys for key in m.keys}
    assert capacity.LOGGED_BUILTIN_KEYS == tuple(m.keys[0] for m in with_keys)
    # a new per-step metric, declared once, is read from the state by the exporters
    new = catalog.Metric(
        "traintel_weight_norm", "gauge", "", "Latest weight norm.", keys=("weight_norm",)
    )
    monkeypatch.setattr(catalog, "METRICS", (*catalog.METRICS, dataclasses.replace(new)))
    run_state = state.RunState()
    run_state.latest["weight_norm"] = 3.5
    assert list(readings.readers({})["traintel_weight_norm"](run_state)) == [(3.5, {})]


def test_first_error_timestamp_is_exported_once_the_run_has_an_error():
    """RunFailed names the job's root cause from this gauge (bottomk over the job's ranks)."""
    from traintel.core.state import RunState

    read = readers({})["traintel_first_error_timestamp_seconds"]
    run_state = RunState()
    assert list(read(run_state)) == []
    run_state.first_error = {"ts": 1700000000.5, "error_type": "oom", "exc_type": "E", "step": 3}
    assert list(read(run_state)) == [(1700000000.5, {})]
