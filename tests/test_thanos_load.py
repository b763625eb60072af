"""benchmarks/thanos_load.py at a tiny size: the load reaches Prometheus and the Receive hashring
(three real Receive, replication factor 2), nothing is refused, and the per-core figures it
reports for docs/scaling.md are positive."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))

from benchmarks import harness, thanos_load  # noqa: E402

pytestmark = pytest.mark.slow


def test_tiny_load_reaches_prometheus_and_every_replica() -> None:
    try:  # 10 s: the measured window must hold a few of the collector's remote-write flushes
        result = thanos_load.run(ranks=8, interval_s=1.0, seconds=10.0, senders=1, limit_mib=512)
    except harness.Skipped as reason:
        pytest.skip(str(reason))
    assert result["requests_refused"] == 0 and result["requests_sent"] > 0
    assert result["samples_per_s"] > 0 and result["receive_appended_per_s"] > 0
    # replication factor 2: every series the collector wrote is stored on two Receive (Prometheus
    # also holds its recorded rule series, far fewer than the written ones)
    stored = result["receive_series_stored"]
    assert stored % 2 == 0 and result["active_series"] < stored <= 2 * result["active_series"]
    for per_core in (
        result["prometheus_samples_per_core_s"],
        result["receive_samples_per_core_s"],
        result["receive_appends_per_core_s"],
    ):
        assert per_core is None or per_core > 0
    assert set(result["cores_used"]) == {
        "receive-0",
        "receive-1",
        "receive-2",
        "prometheus",
        "otelcol",
    }
    assert "loadavg" in result["environment"]
