"""A run's /metrics as Prometheus reads it: `promtool check metrics` (the real promtool) passes
with every catalog family present; the format and compression are negotiated as prometheus-client
does (OpenMetrics, gzip, ``name[]``); user histograms keep their own buckets on both paths."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

import traintel
from fake_nvml import FakeNvml
from traintel.core.catalog import METRICS
from traintel.stack import install
from traintel.testing import capture


def _get(url: str, **headers: str) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(response.headers), response.read()


def _families(text: str) -> set[str]:
    return {
        f"{f.name}_total" if f.type == "counter" else f.name
        for f in text_string_to_metric_families(text)
    }


@pytest.fixture(scope="module")
def everything(tmp_path_factory, quiet):
    """A live run whose /metrics has every catalog family: a real run on a CPU, with NVML's
    stand-in (tests/fake_nvml.py: no GPU here) for two GPUs, one of them in MIG mode."""
    patch = pytest.MonkeyPatch()
    fake = FakeNvml(count=2, mig={1: [3]})
    patch.setitem(sys.modules, "pynvml", fake)
    patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # export to a closed port, so that failed exports are counted (traintel_export_failures_total)
    patch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    patch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    run = traintel.init(
        **{
            **quiet,
            "project": "test",
            "http_port": 0,
            "total_steps": 100,
            "dir": str(tmp_path_factory.mktemp("run")),
            "otlp": True,
            "shutdown_timeout": 0.5,
            "sample_interval": 0.05,
            "all_gpus": True,
        }
    )
    for _ in run.track(range(5)):
        run.log(loss=0.5, lr=0.1, grad_norm=1.0, samples=8, tokens=64, accuracy=0.9)
    run.log(loss=float("nan"))
    run.log(loss=0.5, samples=-8)  # refused, counted (traintel_refused_total), not raised
    run.log_eval(val_loss=0.25)
    run.event("checkpoint", path="ckpt")
    run.error(ValueError("corrupt sample"), operation="data_loading")
    run.counter("skipped").inc()
    run.gauge("queue").set(3)
    run.summary["best_accuracy"] = 0.9
    run.histogram("seq_len", buckets=[64, 128, 256]).observe(100)
    with run.timer("forward"):
        pass
    with run.span("save"):
        pass
    fake.xid(0, 79)
    # The CUDA allocator's readings come from torch.cuda, which needs a GPU: stood in here by
    # readings set the way the CUDA sampler sets them.
    for metric in METRICS:
        if metric.group == "cuda":
            run.state.readings[(metric.name, (("device", "0"),))] = 1.0
    url = f"http://127.0.0.1:{run.server.port}/metrics"
    catalog = {m.name for m in METRICS}
    deadline = time.monotonic() + 20
    while (missing := catalog - _families(_get(url)[1].decode())) and time.monotonic() < deadline:
        run.log(loss=0.4)  # the interval min/max need a value since the previous scrape
        time.sleep(0.1)
    yield run, url, missing
    run.finish()
    patch.undo()


def test_every_family_is_on_metrics(everything):
    _, _, missing = everything
    assert missing == set()


def test_promtool_check_metrics_passes(everything):
    promtool = install.binary("prometheus", "promtool")
    if promtool is None:
        pytest.skip(install.missing_reason("prometheus") or "promtool is not installed")
    run, url, _ = everything
    run.log(loss=0.3)  # a value since the previous scrape, for the interval min/max
    run.flush()
    _, body = _get(url)
    assert _families(body.decode()) == {m.name for m in METRICS}
    done = subprocess.run(
        [str(promtool), "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert done.stdout + done.stderr == b""  # no lint finding at all


def test_openmetrics_and_gzip_are_negotiated_as_prometheus_client_does(everything):
    _, url, _ = everything
    headers, body = _get(
        url, Accept="application/openmetrics-text; version=1.0.0", **{"Accept-Encoding": "gzip"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in om_families(text)}
    assert families["traintel_steps"].type == "counter"  # OpenMetrics: the family has no _total
    plain_headers, plain = _get(url, **{"Accept-Encoding": "identity"})
    assert plain_headers["Content-Type"].startswith("text/plain; version=")
    assert "Content-Encoding" not in plain_headers and plain.startswith(b"# HELP")


def test_name_parameters_restrict_the_families(everything):
    _, url, _ = everything
    _, body = _get(f"{url}?name[]=traintel_loss&name[]=traintel_steps_total")
    assert _families(body.decode()) == {"traintel_loss", "traintel_steps_total"}


def test_a_user_histogram_keeps_its_own_buckets_on_both_paths(quiet_run):
    with capture() as telemetry:
        with quiet_run(otlp=None, http_port=0) as run:
            lengths = run.histogram("seq_len", buckets=[64, 128, 256, 512])
            assert run.histogram("seq_len") is lengths  # found again, buckets and all
            for value in (100, 100, 300, 1000):
                lengths.observe(value)
            run.histogram("plain").observe(7)
            run.flush()
            _, body = _get(f"http://127.0.0.1:{run.server.port}/metrics")
            telemetry.collect()
    buckets = {
        (s.labels["metric"], s.labels["le"]): s.value
        for f in text_string_to_metric_families(body.decode())
        if f.name == "traintel_user_observations"
        for s in f.samples
        if s.name.endswith("_bucket")
    }
    assert {le: v for (m, le), v in buckets.items() if m == "seq_len"} == {
        "64.0": 0,
        "128.0": 2,
        "256.0": 2,
        "512.0": 3,
        "+Inf": 4,
    }
    # without buckets of its own: OpenTelemetry's default bounds, 7 lands in le="10.0"
    assert buckets[("plain", "5.0")] == 0 and buckets[("plain", "10.0")] == 1
    points = {
        attrs["metric"]: point for attrs, point in telemetry.points("traintel_user_observations")
    }
    assert list(points["seq_len"].explicit_bounds) == [64.0, 128.0, 256.0, 512.0]
    assert list(points["seq_len"].bucket_counts) == [0, 2, 0, 1, 1]


def test_histogram_buckets_are_checked_at_the_door(quiet_run):
    with quiet_run(otlp=False, strict=True) as run:
        run.histogram("ok", buckets=(1, 2.5))
        with pytest.raises(ValueError, match="already has buckets"):
            run.histogram("ok", buckets=[1, 3])
        with pytest.raises(ValueError, match="must increase"):
            run.histogram("down", buckets=[2, 1])
        with pytest.raises(ValueError, match="must be finite"):
            run.histogram("nan", buckets=[1, float("nan")])
        with pytest.raises(TypeError, match="list of numbers"):
            run.histogram("text", buckets="1,2")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="1 to 64"):
            run.histogram("many", buckets=range(65))


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.text(),
        st.lists(
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True),
                st.integers(),
                st.booleans(),
                st.text(),
                st.none(),
            ),
            max_size=70,
        ),
    )
)
def test_garbage_buckets_are_refused_or_well_formed(garbage):
    from traintel.run.instruments import MAX_BUCKETS, check_buckets

    try:
        bounds = check_buckets("h", garbage)
    except (TypeError, ValueError):
        return
    assert 1 <= len(bounds) <= MAX_BUCKETS
    assert all(isinstance(b, float) and b == b and abs(b) != float("inf") for b in bounds)
    assert list(bounds) == sorted(set(bounds))
