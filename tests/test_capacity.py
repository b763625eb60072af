"""The capacity calculator (traintel.stack.capacity) against a real run's series and
docs/scaling.md."""

from __future__ import annotations

import math
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import traintel
from traintel.stack import capacity

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_capacity_counts_the_series_of_a_real_run(tmp_path: Path, quiet) -> None:
    workload = capacity.Workload(
        user_metrics=2,
        eval_metrics=1,
        counters=1,
        gauges=1,
        histograms=1,
        timers=1,
        operations=1,
        error_kinds=1,
        system=False,
        otlp=False,
        events=4,
    )  # milestone, eval, best_eval, checkpoint
    with traintel.init(project="cap", dir=str(tmp_path), total_steps=4, **quiet) as run:
        for _ in run.track(range(4)):
            run.log(loss=0.5, lr=0.1, grad_norm=1.0, samples=2, tokens=10, acc=0.5, f1=0.4)
            run.flush()  # rates (and so the ETA) need the record writer to have run
        run.log_eval(val_loss=0.3)
        run.counter("retries").inc()
        run.gauge("queue").set(3)
        run.histogram("batch_tokens").observe(100)
        with run.timer("load"), run.span("checkpoint"):
            pass
        run.event("checkpoint")
        run.error(ValueError("bad value"))
        run.flush()
        exposed = {
            family.name: len(family.samples)
            for family in text_string_to_metric_families(generate_latest(run.registry).decode())
        }
    # prometheus-client drops the _total suffix from counter family names
    expected = {
        name.removesuffix("_total"): n
        for name, n in capacity.series_by_metric(workload).items()
        if n
    }
    assert exposed == expected


def test_scaling_doc_table_is_the_calculators_output() -> None:
    text = (DOCS / "scaling.md").read_text()
    table = re.search(r"<!-- capacity-table -->\n(.*?)\n<!-- /capacity-table -->", text, re.S)
    assert table, "docs/scaling.md lost its capacity-table markers"
    assert table.group(1) == capacity.render_table()


def test_series_grow_linearly_with_ranks() -> None:
    one = capacity.Workload(gpus_per_rank=1, user_metrics=3)
    many = capacity.Workload(ranks=256, gpus_per_rank=1, user_metrics=3)
    assert capacity.series_per_run(many) == 256 * capacity.series_per_run(one)
    more_metrics = capacity.Workload(gpus_per_rank=1, user_metrics=4)
    # a user metric: its latest value, and its logged min, max, count and non-finite count
    assert capacity.series_per_run(more_metrics) - capacity.series_per_run(one) == 5
    assert math.isclose(capacity.samples_per_second(one, 15), capacity.series_per_run(one) / 15)


def test_spanmetrics_buckets_match_the_collector_config() -> None:
    import yaml

    config = yaml.safe_load((DOCS.parent / "otel-collector" / "config.yaml").read_text())
    buckets = config["connectors"]["span_metrics"]["histogram"]["explicit"]["buckets"]
    assert capacity.SPANMETRICS_BUCKETS == len(buckets)
