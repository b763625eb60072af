"""The live status endpoint, spoken to over real HTTP, and the status/debug commands.

Each run binds port 0 (a free port) on loopback; a real client reads /events while a run trains
in another thread. SIGUSR1 is sent to a real run in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from stack_fixture import eventually
from traintel.cli import main
from traintel.core.catalog import METRICS
from traintel.export import page
from traintel.export.server import Progress, StatusServer


def _url(run) -> str:
    return f"http://127.0.0.1:{run.server.port}"


def _read_events(
    url: str, out: list[tuple[str, dict]], connected: threading.Event, query: str = ""
) -> None:
    """Collect (event, data) pairs from an SSE stream until the server ends it."""
    with requests.get(f"{url}/events{query}", stream=True, timeout=30) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        connected.set()
        name = None
        for raw in response.iter_lines(decode_unicode=True):
            if raw.startswith("event: "):
                name = raw.removeprefix("event: ")
            elif raw.startswith("data: "):
                out.append((name, json.loads(raw.removeprefix("data: "))))


def _train(run) -> None:
    for epoch in run.epochs(2):
        for _ in run.track(range(10)):
            run.log(loss=1.0, samples=8)
            time.sleep(0.06)
        run.log_eval(val_loss=1.0 / (epoch + 1))
    run.event("checkpoint", path="ckpt/step-20.pt")
    run.error(ValueError("corrupt sample 17 skipped"), operation="data_loading")


def _follow_events(run, query: str = "") -> tuple[threading.Thread, list[tuple[str, dict]]]:
    """A real HTTP client reading the run's /events stream on a thread, once connected."""
    events: list[tuple[str, dict]] = []
    connected = threading.Event()
    reader = threading.Thread(target=_read_events, args=(_url(run), events, connected, query))
    reader.start()
    assert connected.wait(10)
    return reader, events


def test_events_stream_progress_milestones_and_errors_while_training(quiet_run):
    run = quiet_run(http_port=0)
    reader, events = _follow_events(run)
    trainer = threading.Thread(target=_train, args=(run,))
    trainer.start()
    trainer.join(60)
    run.finish()
    reader.join(10)
    assert not reader.is_alive(), "the stream must end when the run finishes"

    kinds = [name for name, _ in events]
    progress = [data for name, data in events if name == "progress"]
    assert progress[0]["step"] == 0 and len(progress) >= 2
    assert max(p["step"] for p in progress) > 0 and progress[-1]["run"] == run.id
    assert [d["percent"] for n, d in events if n == "milestone"] == [25, 50, 75, 90, 100]
    assert [d["metrics"]["val_loss"] for n, d in events if n == "eval"] == [1.0, 0.5]
    assert [d["event"] for n, d in events if n == "event"] == ["checkpoint"]
    (error,) = [d for n, d in events if n == "error"]
    assert (error["error_type"], error["exc_type"]) == ("data", "ValueError")
    assert kinds[-1] == "run_end" and events[-1][1]["status"] == "finished"


def test_live_pages_share_the_record_reading_and_each_gets_every_line_in_order(quiet_run):
    """Three live pages (``/events?record=1``) on one run: each gets every line of the record from
    its first, in order, the same batches as the others, and the readings and progress snapshots
    are made once for all of them, not once per page."""
    run = quiet_run(http_port=0)
    pages = [_follow_events(run, "?record=1") for _ in range(3)]
    _train(run)
    time.sleep(2.5)  # the writer flushes every second; progress at least twice
    run.finish()
    for reader, _ in pages:
        reader.join(10)
        assert not reader.is_alive(), "the stream must end when the run finishes"

    tail = page.RecordTail.open(run.dir)  # the record read on its own, no sharing
    expected = [line for lines in iter(tail.poll, []) for line in lines]
    tail.close()
    assert [line["type"] for line in expected].count("step") == 20
    batches = [[d for n, d in events if n == "record"] for _, events in pages]
    assert batches[0] == batches[1] == batches[2]
    assert [line for batch in batches[0] for line in batch] == expected
    assert run.server.shared_reads.taken >= len(batches[0])  # read once, taken by the others
    progress = [[d for n, d in events if n == "progress"] for _, events in pages]
    assert all(len(p) >= 2 and p[-1]["run"] == run.id and "debug" in p[-1] for p in progress)
    assert run.server.progress.made <= max(map(len, progress)) + 1  # not once per page


def test_progress_snapshot_is_made_once_per_interval(quiet_run):
    with quiet_run(http_port=0) as run:
        progress = Progress(run, every_s=3600.0)
        first = progress.body()
        run.log(loss=1.0)
        assert [progress.body(), progress.body()] == [first, first] and progress.made == 1
        assert json.loads(first)["run"] == run.id
        assert progress.next_due() > time.monotonic()
        progress.every_s = 1e-9  # every call a new interval: a new snapshot
        progress.body()
        assert progress.made == 2


def test_record_tails_at_one_place_share_a_reading_and_others_read_their_own(quiet_run):
    with quiet_run() as run:
        for _ in run.track(range(30)):
            run.log(loss=0.5)
    alone = page.RecordTail.open(run.dir)
    expected = alone.poll_encoded()
    assert expected is not None and alone.poll_encoded() is None
    shared = page.SharedReads()
    first, second = page.RecordTail.open(run.dir), page.RecordTail.open(run.dir)
    assert first.poll_encoded(shared) == expected and shared.taken == 0
    assert second.poll_encoded(shared) == expected and shared.taken == 1
    assert first.poll_encoded(shared) is None and second.poll_encoded(shared) is None
    for tail in (alone, first, second):
        tail.close()


def test_status_healthz_and_metrics(quiet_run):
    with quiet_run(http_port=0, total_steps=10) as run:
        for _ in run.track(range(4)):
            run.log(loss=0.5, lr=0.1, samples=2)
        run.log_eval(val_loss=0.25)
        with run.span("checkpoint"):
            pass
        url = _url(run)
        assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok", "run": run.id}
        status = requests.get(f"{url}/status", timeout=5).json()
        assert (status["run"], status["status"], status["step"]) == (run.id, "running", 4)
        assert status["progress"] == pytest.approx(0.4) and status["debug"] is False
        assert status["latest"]["loss"] == 0.5 and status["eval_best"] == {"val_loss": 0.25}

        def scrape():
            response = requests.get(f"{url}/metrics", timeout=5)
            return response if "traintel_operation_duration_seconds" in response.text else None

        # the record writer works on its own thread: histograms appear within a flush interval
        response = eventually(scrape, 10, 0.05, "the operation histogram on /metrics")
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        catalog = {m.name: m for m in METRICS}
        families = {
            f"{f.name}_total" if f.type == "counter" else f.name: f
            for f in text_string_to_metric_families(response.text)
        }
        assert set(families) <= set(catalog)
        assert {
            "traintel_run_info",
            "traintel_steps_total",
            "traintel_loss",
            "traintel_learning_rate",
            "traintel_samples_total",
            "traintel_eval_best",
            "traintel_operation_duration_seconds",
            "traintel_run_progress_ratio",
        } <= set(families)
        for name, family in families.items():
            assert family.documentation == catalog[name].description
        assert requests.get(f"{url}/nope", timeout=5).status_code == 404


def test_debug_toggles_over_http(quiet_run, recorded):
    with quiet_run(http_port=0) as run:
        url = f"{_url(run)}/debug"
        assert requests.get(url, timeout=5).json() == {"enabled": False}
        assert requests.post(url, json={"enabled": True}, timeout=5).json() == {"enabled": True}
        assert run.debug
        assert requests.put(url, json={"enabled": False}, timeout=5).json() == {"enabled": False}
        assert not run.debug
        assert requests.post(url, json={"enabled": "yes"}, timeout=5).status_code == 400
        assert (
            requests.post(
                url, data=b"not json", timeout=5, headers={"Content-Type": "application/json"}
            ).status_code
            == 400
        )
        assert requests.post(url, data=b'{"enabled": true}', timeout=5).status_code == 415
        assert requests.post(f"{_url(run)}/status", json={}, timeout=5).status_code == 404
    events = recorded(run.dir).of("event")
    assert [
        (e["fields"]["enabled"], e["fields"]["source"])
        for e in events
        if e["event"] == "debug_mode"
    ] == [(True, "http from 127.0.0.1"), (False, "http from 127.0.0.1")]


def test_sigusr1_toggles_debug_in_a_running_process(tmp_path, recorded):
    script = textwrap.dedent(f"""
        import itertools, time, traintel
        with traintel.init(project="t", dir={str(tmp_path)!r}, progress="off", otlp=False,
                           sample_interval=0, console_logs=False, http_port=0) as run:
            print(run.server.port, run.dir, flush=True)
            for step in run.track(itertools.count()):
                run.log(loss=1.0)
                time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        port, run_dir = proc.stdout.readline().split()
        url = f"http://127.0.0.1:{port}/debug"
        assert requests.get(url, timeout=5).json() == {"enabled": False}
        proc.send_signal(signal.SIGUSR1)
        eventually(lambda: requests.get(url, timeout=5).json()["enabled"], 10, 0.05, "debug on")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    events = recorded(Path(run_dir)).of("event")
    assert [
        (e["fields"]["enabled"], e["fields"]["source"])
        for e in events
        if e["event"] == "debug_mode"
    ] == [(True, "SIGUSR1")]


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def test_remote_bind_needs_consent_and_remote_clients_cannot_switch_debug(quiet_run):
    with pytest.raises(ValueError, match="allow_remote_http=True"):
        quiet_run(http_port=0, http_host="0.0.0.0")
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with quiet_run(http_port=0, http_host="0.0.0.0", allow_remote_http=True) as run:
        remote = f"http://{address}:{run.server.port}"
        assert requests.get(f"{remote}/status", timeout=5).json()["run"] == run.id
        refused = requests.post(f"{remote}/debug", json={"enabled": True}, timeout=5)
        assert refused.status_code == 403 and not run.debug
        assert (
            requests.post(f"{_url(run)}/debug", json={"enabled": True}, timeout=5).status_code
            == 200
        )
        assert run.debug


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_stop_leaves_no_threads_or_sockets(quiet_run):
    quiet_run().finish()  # warm-up: lazy imports and logging set-up open nothing later
    threads, fds = threading.active_count(), _open_fds()
    run = quiet_run(http_port=0)
    reader, events = _follow_events(run)
    idle = socket.create_connection(("127.0.0.1", run.server.port))  # says nothing at all
    requests.get(f"{_url(run)}/status", timeout=5)
    run.log(loss=1.0)
    run.finish()
    reader.join(10)
    idle.close()
    assert threading.active_count() == threads, threading.enumerate()
    assert _open_fds() <= fds
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{_url(run)}/healthz", timeout=2)


def test_status_server_reports_the_port_it_got(quiet_run):
    run = quiet_run()
    server = StatusServer(run, "127.0.0.1", 0)
    try:
        server.start()
        assert server.port > 0 and server.host == "127.0.0.1"
        assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).ok
    finally:
        server.stop()
        run.finish()


def test_status_and_debug_commands(tmp_path, monkeypatch, quiet_run, recorded):
    monkeypatch.setenv("TRAINTEL_DIR", str(tmp_path))
    runner = CliRunner()
    with quiet_run(name="done") as finished:
        finished.log(loss=0.5)
    with quiet_run(name="live", http_port=0) as live:
        for _ in live.track(range(3)):
            live.log(loss=0.25)
        url = _url(live)
        eventually(lambda: len(recorded(live.dir).of("step")) == 3, 10, 0.05, "3 step lines")

        result = runner.invoke(main, ["status", "--url", url, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["step"] == 3

        result = runner.invoke(main, ["status", str(live.dir), "--format", "json"])
        assert json.loads(result.output)["status"] == "running"
        assert json.loads(result.output)["step"] == 3

        result = runner.invoke(main, ["status", "--all", "--format", "json"])
        rows = {row["name"]: row for row in json.loads(result.output)}
        assert (rows["done"]["status"], rows["done"]["step"]) == ("finished", 1)
        assert rows["live"]["status"] == "running"

        result = runner.invoke(main, ["status", "--all"])
        assert result.exit_code == 0 and "finished" in result.output and "running" in result.output

        assert (
            runner.invoke(main, ["debug", "on", "--url", url]).output.strip() == "debug logging on"
        )
        assert live.debug
        assert runner.invoke(main, ["debug", "off", "--url", url]).exit_code == 0
        assert not live.debug
    dead = runner.invoke(main, ["debug", "on", "--url", url])
    assert dead.exit_code != 0 and "no run answers" in dead.output


def test_status_of_a_killed_run_is_crashed(tmp_path):
    script = (
        f"import traintel, time; r = traintel.init(project='t', dir={str(tmp_path)!r}, "
        "progress='off', otlp=False, sample_interval=0, console_logs=False, "
        "flush_interval=0.05); r.log(loss=1.0); print(r.dir, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    run_dir = proc.stdout.readline().strip()
    time.sleep(0.3)  # one flush
    proc.kill()
    proc.wait(timeout=10)
    result = CliRunner().invoke(main, ["status", run_dir, "--format", "json"])
    status = json.loads(result.output)
    assert (status["status"], status["step"]) == ("crashed", 1)
