"""Do no harm: inside a training run no call of traintel raises because of telemetry, settings
from the environment never stop a run, the user's exception is theirs, a forked child cannot grow
without bound, and the run's end is recorded whatever ends it (issue 28). Each test is a finding,
triggered as a user's program triggers it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

from conftest import QUIET, read_lines
from reliability_log import record
from traintel.testing import capture

SRC = str(Path(__file__).resolve().parents[1] / "src")


def warnings_of(run_dir: Path) -> list[str]:
    """traintel's own warnings in a run's record."""
    return [line["message"] for line in read_lines(run_dir).of("log") if line["level"] == "warning"]


def python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": SRC, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- 1. names over the budget, bad values and fields: refused, said once, counted ------------
def test_a_run_goes_on_past_its_name_budget_at_hour_ten(quiet_run):
    """Finding 1: the 257th name (a per-layer norm) raised ValueError out of run.log, and once
    the budget was full the integrations' own run.event("checkpoint") raised too."""
    with quiet_run(max_metric_names=5) as run:
        for step in range(3):
            run.log({f"layer{i}/grad_norm": 1.0 for i in range(8)} | {"loss": 0.5})
        run.event("checkpoint", path="ckpt-3")
        with run.span("save"):
            pass
        run.counter("skipped").inc()
        best = run.log_eval(val_loss=0.25)
    steps = read_lines(run.dir).of("step")
    assert len(steps) == 3  # every step recorded, with the names the budget admitted
    assert set(steps[0]["metrics"]) == {"loss", *(f"layer{i}/grad_norm" for i in range(5))}
    assert [e["event"] for e in read_lines(run.dir).of("event")] == ["checkpoint"]
    assert best == {}  # refused: no best claimed
    said = [m for m in warnings_of(run.dir) if "would be name number" in m]
    # one warning per key, each naming the key and the fix, however often it came
    for key in (
        "layer5/grad_norm",
        "layer7/grad_norm",
        "checkpoint",
        "save",
        "skipped",
        "val_loss",
    ):
        assert len([m for m in said if repr(key) in m]) == 1, key
    assert all("max_metric_names" in m and "strict=True" in m for m in said)
    assert run.summary["refused"]["name_budget"] == 3 * 3 + 4
    assert run.summary["status"] == "finished"
    record(
        "names beyond the budget at hour ten (8 per step, max_metric_names=5), then the "
        "integrations' checkpoint event, a span, a counter, an eval",
        "refused per key with "
        "one warning naming it and the fix, counted; the run and its record go on",
        f"{len(steps)}/3 steps with the 5 admitted names; checkpoint event recorded; "
        f"{run.summary['refused']['name_budget']} refusals counted, {len(said)} warnings "
        "(one per key); status finished",
    )


def test_strict_runs_and_capture_raise_what_runs_refuse(quiet_run):
    with quiet_run(max_metric_names=1, strict=True) as run:
        run.log(loss=1.0, acc=0.5)
        with pytest.raises(ValueError, match="'top1' would be name number 2"):
            run.log(top1=1.0)
        with pytest.raises(TypeError, match="'loss' must be a number"):
            run.log(loss="low")
    with capture():
        with quiet_run() as run:
            with pytest.raises(ValueError, match="'samples' = -1 is refused"):
                run.log(loss=1.0, samples=-1)


def test_bad_input_to_every_recording_call_is_refused_not_raised(quiet_run):
    with quiet_run() as run:
        run.log("loss", 1.0)  # type: ignore[arg-type]  # what users get wrong
        run.log()
        run.log(loss=1.0, step="ten")  # type: ignore[arg-type]
        run.log(loss=1.0, step_s=-3)
        run.log_values(acc="high")
        run.log_eval(bleu=1.0, goals={"bleu": "up"})
        run.event("bad name")
        run.event("fine", level="loud")  # type: ignore[arg-type]
        run.error("not an exception")  # type: ignore[arg-type]
        run.error(ValueError("x"), context=[1, 2])  # type: ignore[arg-type]
        run.counter("c").inc(-1)
        run.gauge("g").set("x")  # type: ignore[arg-type]
        run.histogram("h", buckets=[2, 1]).observe(float("nan"))
        with run.span("a b"):
            pass
        run.logger("a b").info("still logged")
        run.set_total_steps(-1)
        run.begin_epoch(-1)
    refused = run.summary["refused"]
    assert sum(refused.values()) >= 16 and set(refused) <= {
        "name",
        "name_budget",
        "type",
        "value",
        "count",
        "field",
        "call",
    }
    assert run.summary["status"] == "finished" and run.summary["steps"] == 1


def test_refusals_are_on_status_and_metrics(quiet_run):
    with quiet_run(http_port=0) as run:
        run.log(loss=1.0, note="text")  # type: ignore[arg-type]
        base = f"http://127.0.0.1:{run.server.port}"
        status = json.loads(urllib.request.urlopen(f"{base}/status", timeout=5).read())
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    assert status["refused"] == {"type": 1}
    assert "traintel_refused_total{" in metrics and 'reason="type"' in metrics


names = st.text(max_size=30)
values = st.one_of(
    st.floats(allow_nan=True),
    st.integers(),
    st.text(max_size=5),
    st.none(),
    st.lists(st.floats(), max_size=2),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=names,
    fields=st.dictionaries(st.sampled_from(["a", "b", "step", "level"]), values, max_size=3),
    value=values,
)
def test_no_recording_call_raises_whatever_it_is_given(quiet_run, name, fields, value):
    """Hypothesis at the public doors whose input grew: names, values, fields, steps."""
    run = quiet_run(max_metric_names=3, reinit="create_new")
    try:
        run.log({name: value}, step=fields.get("step"))
        run.log_values({name: value})
        run.log_eval(**{name or "x": value})
        run.event(name, **{k: v for k, v in fields.items() if k != "level"})
        with run.span(name, **{k: v for k, v in fields.items() if k != "level"}):
            pass
        run.counter(name).inc(value)  # type: ignore[arg-type]
        run.gauge(name).set(value)  # type: ignore[arg-type]
        run.histogram(name).observe(value)  # type: ignore[arg-type]
    finally:
        run.finish()
    assert run.summary["status"] == "finished"


# -- 2. settings from the environment never stop a run ---------------------------------------
GARBAGE = [
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "99999"),
    ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
    ("OTEL_BLRP_MAX_QUEUE_SIZE", "0"),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "-1"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "-1"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "1e15"),
    ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "-1"),
    ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "abc"),
    ("OTEL_BLRP_EXPORT_TIMEOUT", "nan"),
    ("OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT", "1.5"),
]


@pytest.mark.parametrize("variable, value", GARBAGE)
def test_a_bad_sdk_setting_is_its_default_with_a_warning_naming_it(tmp_path, variable, value):
    """Finding 2: each of these stopped traintel.init with the SDK's error (mostly not naming
    the variable); 1e15 killed the metric reader's thread. A real process, so that the SDK is
    imported under the variable as a user's job imports it."""
    done = python(
        """
        import threading, traintel
        run = traintel.init(project="env", dir="runs", progress="off", sample_interval=0,
                            console_logs=False, otlp=True, shutdown_timeout=0.2)
        for _ in range(3):
            run.log(loss=1.0)
        with run.span("save"):
            run.event("checkpoint", note="x" * 300)
        readers = [t for t in threading.enumerate() if t.name == "traintel-metric-reader"]
        print("reader alive:", all(t.is_alive() for t in readers) and len(readers) == 1)
        run.finish()
        print("status:", run.summary["status"])
    """,
        tmp_path,
        **{variable: value, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert done.returncode == 0, done.stderr
    assert "reader alive: True" in done.stdout and "status: finished" in done.stdout
    said = [line for line in done.stderr.splitlines() if f"{variable}={value!r}" in line]
    assert len(said) == 1 and "using the default" in said[0], done.stderr
    _TRIED.append(f"{variable}={value}")
    record(
        "bad OTEL_* SDK settings in the environment (issue 28's list)",
        "the default, one warning naming the variable; init never stops; the metric reader lives",
        f"{len(_TRIED)} values tried, each: run finished, one warning naming the variable, "
        f"metric reader alive ({', '.join(_TRIED)})",
    )


_TRIED: list[str] = []


@settings(max_examples=25, deadline=None)
@given(value=st.text(alphabet="0123456789-.eEnaif x", min_size=1, max_size=8))
def test_any_processor_setting_gives_settings_the_sdk_takes(value):
    from traintel.export import sdk_settings

    os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = os.environ["OTEL_BSP_SCHEDULE_DELAY"] = value
    try:
        options = sdk_settings.span_processor_options()
        interval = sdk_settings.metric_interval_ms()
    finally:
        del os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], os.environ["OTEL_BSP_SCHEDULE_DELAY"]
    assert 0 < options["max_export_batch_size"] <= options["max_queue_size"]
    assert 0 < options["schedule_delay_millis"] <= sdk_settings.MAX_MS
    assert 0 < interval <= sdk_settings.MAX_MS


# -- 3. the user's exception is theirs, whatever its __str__ does ----------------------------
class Unprintable(Exception):
    @property
    def args(self) -> tuple[object, ...]:  # type: ignore[override]
        raise RuntimeError("args is broken")

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


def test_an_exception_whose_str_raises_propagates_unchanged(quiet_run, recorded):
    """Finding 3: inside the with block the user saw traintel's error instead of their own,
    and the run had no run_end and no summary.json."""
    raised = Unprintable()
    with pytest.raises(Unprintable) as caught:
        with quiet_run() as run:
            run.log(loss=1.0)
            raise raised
    assert caught.value is raised
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    (end,) = recorded(run.dir).of("run_end")
    assert end["status"] == "failed"
    (error,) = recorded(run.dir).of("error")
    assert error["exc_type"] == "Unprintable" and "str() raised RuntimeError" in error["message"]
    record(
        "an exception whose __str__, __repr__ and args raise, escaping `with traintel.init()` (and "
        "uncaught, through the excepthook)",
        "the user's exception propagates unchanged; "
        "the run ends failed with run_end and summary.json",
        "the same exception object reached the caller; status failed, run_end and "
        "summary.json written; uncaught: no 'Error in sys.excepthook', status failed",
    )


def test_an_uncaught_exception_whose_str_raises_fails_the_run(tmp_path):
    """Uncaught, the excepthook failed ('Error in sys.excepthook') and the run was recorded as
    finished."""
    done = python(
        """
        import traintel
        class Unprintable(Exception):
            def __str__(self): raise RuntimeError("broken")
        run = traintel.init(project="x", dir="runs", progress="off", sample_interval=0,
                            console_logs=False, otlp=False)
        run.log(loss=1.0)
        raise Unprintable()
    """,
        tmp_path,
    )
    assert done.returncode == 1
    assert "Error in sys.excepthook" not in done.stderr and "Unprintable" in done.stderr
    (summary,) = (tmp_path / "runs").glob("*/summary.json")
    assert json.loads(summary.read_text())["status"] == "failed"


# -- 4. a huge message costs nothing on the training thread ----------------------------------
def test_a_huge_error_message_is_cut_before_any_work(quiet_run, recorded):
    """Finding 4: run.error cost 0.6 s per MB of message (a 50 MB message: 41 s)."""
    with quiet_run(otlp=None) as run:
        try:
            raise RuntimeError("token abc " * 5_000_000)  # 50 MB
        except RuntimeError as exc:
            started = time.perf_counter()
            line = run.error(exc)
            took = time.perf_counter() - started
    assert line is not None
    assert len(line["message"]) < 20_000 and "50,000,000 characters in all" in line["message"]
    assert len(line["traceback"]) < 30_000
    (error,) = recorded(run.dir).of("error")
    assert error["message"].endswith("[cut: 50,000,000 characters in all]")
    record(
        "run.error with a 50 MB message",
        "cut (its size noted) before any work on the training thread",
        f"{took:.3f} s on the training thread (before: 51.5 s measured on "
        "the same machine); message kept 16,384 characters and its size",
    )


# -- 9. a forked child: no-ops after one warning, bounded ------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_300000_calls_in_a_forked_child_stay_bounded(tmp_path, quiet):
    """Finding 9: every call in a forked child was queued for a writer that never came (1.2 M
    calls: 1 M queued, 411 MB), silently."""
    done = python(
        f"""
        import json, os, traintel
        run = traintel.init(project="fork", dir="runs", **{dict(QUIET)!r})
        seq_len = run.histogram("seq_len")

        def rss():
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        pid = os.fork()
        if pid == 0:
            before = rss()
            for i in range(300_000):
                run.log(loss=1.0, samples=8)
                if i % 10 == 0:
                    run.event("batch", index=i)
                    seq_len.observe(128)
                    with run.span("load"):
                        pass
                    run.logger("data").info("batch %d", i)
            grew = (rss() - before) / 2**20
            own = traintel.init(project="fork", dir="runs", run_id=f"child-{{os.getpid()}}",
                                **{dict(QUIET)!r})  # the documented way to record in a child
            own.log(loss=3.0)
            own.finish()
            print(json.dumps({{"grew_mb": grew, "own_steps": own.summary["steps"]}}), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        run.log(loss=2.0)
        run.finish()
        print(json.dumps({{"steps": run.summary["steps"]}}))
    """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    child, parent = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert child["grew_mb"] < 64
    assert child["own_steps"] == 1  # traintel.init() in the child: a run of its own
    assert parent["steps"] == 1  # nothing of the child's reached the parent's record
    said = [line for line in done.stderr.splitlines() if "forked child" in line]
    assert len(said) == 1 and "traintel.init() in the child" in said[0], done.stderr
    record(
        "300,000 API calls in a forked child (log, event, histogram, span, logger)",
        "no-ops after one warning; the child's memory bounded (< 64 MB)",
        f"child grew {child['grew_mb']:.1f} MB (before: 182 MB, 423,000 items queued for a "
        "writer that never came); 1 warning; the parent's record untouched",
    )


# -- 10. counts never go down ----------------------------------------------------------------
def test_negative_counts_are_refused_and_the_counter_stays_valid(quiet_run):
    """Finding 10: samples=-999999999 made traintel_samples_total go down, and the OpenMetrics
    exposition invalid; NaN samples were silently ignored."""
    with quiet_run(http_port=0) as run:
        url = f"http://127.0.0.1:{run.server.port}/metrics"
        run.log(loss=1.0, samples=32, tokens=64)
        for bad in (-999_999_999, float("nan"), -1):
            run.log(loss=1.0, samples=bad, tokens=bad)
        for _ in run.track(range(2)):
            run.log(loss=1.0, samples=-5)
        request = urllib.request.Request(
            url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        text = urllib.request.urlopen(request, timeout=5).read().decode()
    families = {f.name: f for f in om_families(text)}  # parses: the exposition is valid
    (sample,) = [s for s in families["traintel_samples"].samples if s.name.endswith("_total")]
    assert sample.value == 32
    assert run.summary["samples"] == 32 and run.summary["tokens"] == 64
    assert run.summary["refused"]["count"] == 8
    said = [m for m in warnings_of(run.dir) if "is a count per step" in m]
    assert len(said) == 2  # one per key: samples, tokens
    record(
        "negative and NaN samples/tokens (-999,999,999, NaN, -1, in run.log and run.track)",
        "refused, warned once per key, counted; counters never go down",
        f"traintel_samples_total {sample.value:g} (the good steps' sum); OpenMetrics parses; "
        f"{run.summary['refused']['count']} refusals counted, {len(said)} warnings",
    )


# -- 11. an event field that cannot be printed -----------------------------------------------
def test_an_unprintable_event_field_keeps_its_event(quiet_run, capfd):
    """Finding 11: the event was lost with '--- Logging error ---' on stderr and dropped: 0."""
    with quiet_run(console_logs=True) as run:
        run.event("checkpoint", path=Unprintable(), step=3)
    (event,) = read_lines(run.dir).of("event")
    assert event["fields"]["path"] == "<Unprintable: str() raised RuntimeError>"
    assert event["step"] == 3
    assert run.summary["refused"] == {"field": 1}
    assert "Logging error" not in capfd.readouterr().err
    record(
        "an event field whose __str__ raises",
        "the event kept, the field a placeholder, counted",
        "event recorded with the field as '<Unprintable: str() raised "
        "RuntimeError>'; refused field 1; no '--- Logging error ---'",
    )


# -- 12. SIGHUP ends the run like SIGTERM ----------------------------------------------------
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
def test_sighup_ends_the_run_with_its_record(tmp_path):
    """Finding 12: closing the terminal ended the process with 195 of 290 steps, no run_end and
    no summary."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import time, traintel
        run = traintel.init(project="hup", dir="runs", progress="off", sample_interval=0,
                            console_logs=False, otlp=False)
        print("started", flush=True)
        for step in range(100_000):
            run.log(loss=1.0)
            time.sleep(0.001)
    """),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.3)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 128 + signal.SIGHUP, proc.stderr.read()
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = read_lines(run_dir)
    assert summary["status"] == "interrupted" and lines.of("run_end")[0]["status"] == "interrupted"
    assert summary["steps"] == len(lines.of("step")) > 0
    assert lines.of("event", "signal")[0]["fields"]["signal"] == "SIGHUP"
    record(
        "SIGHUP mid-run (the terminal closed)",
        "the run ends as after SIGTERM: run_end, summary.json, every step",
        f"exit {128 + signal.SIGHUP}; status interrupted; "
        f"{summary['steps']} steps in summary.json = {len(lines.of('step'))} step lines",
    )


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
def test_sighup_stays_ignored_under_nohup(tmp_path):
    done = python(
        """
        import os, signal, traintel
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does
        run = traintel.init(project="hup", dir="runs", progress="off", sample_interval=0,
                            console_logs=False, otlp=False)
        os.kill(os.getpid(), signal.SIGHUP)
        run.log(loss=1.0)
        print("stop requested:", run.stop_requested)
        run.finish()
        print("status:", run.summary["status"])
    """,
        tmp_path,
    )
    assert "stop requested: False" in done.stdout and "status: finished" in done.stdout, done.stderr
