"""Faults injected into real training processes, without signals: a full disk (a small tmpfs),
the run directory deleted, a collector that refuses, hangs, throttles (429/503 with Retry-After)
or rejects (4xx), a closed stdout. Each asserts the exact steps kept and what was said."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from adv_helpers import script_env, start_script, step_numbers

from conftest import read_lines
from reliability_log import record


# -- a misbehaving collector -------------------------------------------------------------------
class Misbehaving(ThreadingHTTPServer):
    """Stand-in for a misbehaving collector (the real one cannot be made to hang or throttle on
    demand): accepts OTLP/HTTP requests and hangs, or answers ``status`` with ``headers``."""

    daemon_threads = True

    def __init__(self, mode: str, status: int = 200, headers: dict[str, str] | None = None):
        self.mode, self.status, self.headers = mode, status, headers or {}
        self.requests = 0
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _Answer)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _Answer(BaseHTTPRequestHandler):
    server: Misbehaving

    def do_POST(self) -> None:
        self.server.requests += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.mode == "hang":
            self.server.release.wait(120)
            return
        body = b'{"error": "no"}'
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


EXPORT_SCRIPT = """
import json, sys, threading, time, urllib.request, traintel
run = traintel.init(project="faults", dir=sys.argv[1], progress="off", sample_interval=0,
                    otlp=True, http_port=0, shutdown_timeout=1.0, step_span_every=1,
                    flush_interval=0.05)
log = run.logger("data")
for i in range(150):
    run.log(loss=1.0 / (i + 1), step_s=0.01)
    log.info("batch %d", i)
    time.sleep(0.01)
base = f"http://127.0.0.1:{run.server.port}"
metrics = urllib.request.urlopen(base + "/metrics").read().decode()
status = json.loads(urllib.request.urlopen(base + "/status").read())
started = time.monotonic()
run.finish()
finish_s = time.monotonic() - started


def export_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith(("Otel", "traintel"))]


# threads cut by finish() end within moments; a hung export left alone would take its 10 s
deadline = time.monotonic() + 5
while export_threads() and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"finish_s": finish_s, "status": status["export"], "dir": str(run.dir),
                  "metrics": [l for l in metrics.splitlines()
                              if l.startswith("traintel_export_failures_total")],
                  "threads": export_threads()}))
"""

CASES = {
    "refused": ({}, None, "cannot connect to 127.0.0.1"),
    "hung": ({"OTEL_EXPORTER_OTLP_TIMEOUT": "10000"}, ("hang",), "no answer from 127.0.0.1"),
    "429 with Retry-After": (
        {},
        ("answer", 429, {"Retry-After": "120"}),
        "answered HTTP 429 Too Many Requests, Retry-After 120 s",
    ),
    "503 with Retry-After": (
        {},
        ("answer", 503, {"Retry-After": "120"}),
        "answered HTTP 503 Service Unavailable, Retry-After 120 s",
    ),
    "400 rejected": ({}, ("answer", 400, {}), "answered HTTP 400 Bad Request"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_kind_of_export_failure_is_counted_and_said_once(tmp_path, case):
    environ, server_args, reason = CASES[case]
    server = Misbehaving(*server_args) if server_args else None
    endpoint = server.url if server else "http://127.0.0.1:9"  # nothing listens on port 9
    env = script_env(
        **{
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",  # milliseconds, as specified
            **environ,
        }
    )
    try:
        started = time.monotonic()
        proc = start_script(EXPORT_SCRIPT, env=env, args=[str(tmp_path)])
        out, err = proc.communicate(timeout=120)
        wall = time.monotonic() - started
    finally:
        if server:
            server.stop()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    warnings = [line for line in err.splitlines() if "OTLP export of" in line]
    assert len(warnings) == 1, err  # one warning, rate-limited, however many exports failed
    assert reason in warnings[0], warnings[0]
    assert "alice" not in err and "Traceback" not in err
    failures = sum(result["status"]["failures"].values())
    assert len(result["metrics"]) == 3, result  # one series per signal, zero included
    if case != "hung":  # a hung export fails after its 10 s timeout, or when finish() cuts it
        assert failures >= 1, result
    summary = orjson.loads((Path(result["dir"]) / "summary.json").read_bytes())
    assert sum(summary["export"]["failures"].values()) >= max(1, failures)
    assert reason in summary["export"]["last_error"]
    assert result["finish_s"] < 1.0 + 0.5, result["finish_s"]
    assert result["threads"] == [], result["threads"]  # no export thread outlives finish()
    assert step_numbers(Path(result["dir"])) == list(range(1, 151))
    if case == "429 with Retry-After":  # honoured: no request while the collector said wait
        assert server is not None and server.requests <= 6, server.requests
    record(
        f"collector {case} (a local stand-in server; the real collector cannot be made "
        "to misbehave on demand)"
        if server
        else "collector refuses connections",
        "one rate-limited warning with the reason; a counter on /metrics, /status and the "
        "summary; finish() within shutdown_timeout; no export thread left",
        f"1 warning ({reason}); {failures} failed exports by /status, "
        f"{sum(summary['export']['failures'].values())} in summary.json; finish() "
        f"{result['finish_s']:.2f} s (bound 1 s); 150/150 steps; 0 export threads after "
        f"finish; process wall {wall:.1f} s",
    )


# -- the run directory deleted under a running writer ----------------------------------------
DELETE_SCRIPT = """
import json, sys, time, pathlib, traintel
marker = pathlib.Path(sys.argv[2])
run = traintel.init(project="faults", dir=sys.argv[1], progress="off", sample_interval=0,
                    otlp=False, flush_interval=0.05)
for i in range(40):
    run.log(loss=1.0)
run.flush()
print("flushed", flush=True)
while not marker.exists():
    time.sleep(0.01)
for i in range(60):
    run.log(loss=2.0)
    time.sleep(0.002)
run.finish()
print(json.dumps({"dir": str(run.dir), "dropped": run.state.dropped}))
"""


def test_a_deleted_run_directory_is_noticed_and_the_loss_counted(tmp_path):
    marker = tmp_path / "deleted"
    proc = start_script(DELETE_SCRIPT, args=[str(tmp_path / "runs"), str(marker)])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "flushed"
    run_dir = next((tmp_path / "runs").iterdir())
    lines_before = len((run_dir / "events.jsonl").read_bytes().splitlines())
    shutil.rmtree(run_dir)
    marker.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    lines = read_lines(run_dir)
    assert [line["type"] for line in lines[:3]] == ["run_start", "config", "event"]
    gap = lines[2]
    assert gap["event"] == "record_gap" and gap["fields"] == {
        "lost_lines": lines_before,
        "reason": "the run directory was deleted",
    }
    assert step_numbers(run_dir) == list(range(41, 101))  # exactly the steps after the deletion
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["record"]["dropped"] == result["dropped"] == lines_before
    assert summary["steps"] == 100
    assert f"{lines_before} lines written before were lost" in err
    record(
        "run directory deleted mid-run (real process)",
        "noticed at the next flush; the loss counted and said; the record starts again",
        f"{lines_before} lines lost (40 steps), said in a record_gap line, a warning and "
        f"summary.json (dropped {summary['record']['dropped']}); steps 41-100 kept, 60/60",
    )


# -- a full disk, on a small tmpfs ---------------------------------------------------------------
DISK_SCRIPT = """
import json, sys, time, pathlib, traintel
stop = pathlib.Path(sys.argv[2])
run = traintel.init(project="faults", dir=sys.argv[1], progress="off", otlp=False,
                    sample_interval=0, flush_interval=0.02, shutdown_timeout=1.0)
steps = 0
while not stop.exists():
    steps += 1
    run.log(loss=1.0, note_id=steps)
    time.sleep(0.002)
run.finish()
print(json.dumps({"steps": steps, "dropped": run.state.dropped, "lines": run._writer.lines,
                  "dir": str(run.dir)}))
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root can mount one here; otherwise the test is skipped, since
    test_record.py's RLIMIT_FSIZE test covers a file-size limit)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip()}); the RLIMIT_FSIZE test "
            "in tests/test_record.py stands in for a full disk"
        )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` but ``leave`` bytes."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def _wait_for(proc: subprocess.Popen[str], text: str, timeout: float = 60) -> list[str]:
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not said: {''.join(seen)}")


def test_a_disk_freed_mid_run_loses_nothing(small_disk, tmp_path):
    filler = _fill(small_disk, 16 * 1024)
    stop = tmp_path / "stop"
    proc = start_script(DISK_SCRIPT, args=[str(small_disk / "runs"), str(stop)])
    said = _wait_for(proc, "cannot write the run record")
    assert "the disk is full" in said[-1]
    time.sleep(0.5)  # steps go on while the disk is full
    filler.unlink()
    said += _wait_for(proc, "the run record is writable again")
    stop.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    run_dir = Path(result["dir"])
    assert step_numbers(run_dir) == list(range(1, result["steps"] + 1))  # every step, in order
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["record"]["dropped"] == 0 and summary["steps"] == result["steps"]
    record(
        "disk full mid-run, then freed (1 MiB tmpfs, real process)",
        "lines wait in memory; written once the disk has room; nothing lost",
        f"{result['steps']}/{result['steps']} steps in the record, in order; dropped 0; "
        "one warning when full, one when writable again",
    )


def test_a_disk_full_to_the_end_says_exactly_what_it_lost(small_disk, tmp_path):
    _fill(small_disk, 16 * 1024)
    stop = tmp_path / "stop"
    proc = start_script(DISK_SCRIPT, args=[str(small_disk / "runs"), str(stop)])
    _wait_for(proc, "cannot write the run record")
    time.sleep(0.3)
    stop.touch()
    started = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    run_dir = Path(result["dir"])
    kept = step_numbers(run_dir)
    assert kept == list(range(1, len(kept) + 1))  # a prefix of the steps, no torn line
    written = sum(len(p.read_bytes().splitlines()) for p in run_dir.glob("events.jsonl*"))
    assert written + result["dropped"] == result["lines"]  # every line kept or counted
    assert f"{result['dropped']} run record lines could not be written" in err
    assert time.monotonic() - started < 30
    record(
        "disk full to the end (1 MiB tmpfs, real process)",
        "finish() retries within shutdown_timeout, then counts and says what it lost",
        f"{len(kept)} of {result['steps']} steps kept (a contiguous prefix); {written} lines "
        f"written + {result['dropped']} counted as lost = {result['lines']} lines",
    )


# -- a closed stdout ------------------------------------------------------------------------------
def test_a_closed_stdout_does_not_stop_training(tmp_path):
    """``python train.py | head -1``: the progress line's reader goes away."""
    code = (
        "import traintel, time\n"
        f"run = traintel.init(project='p', dir={str(tmp_path)!r}, progress='lines', "
        "progress_interval=0, otlp=False, sample_interval=0, total_steps=200)\n"
        "for i in range(200):\n    run.log(loss=1.0)\n    time.sleep(0.002)\n"
        "run.finish()\n"
    )
    env = script_env()
    pipeline = subprocess.run(
        f'{os.environ.get("PYTHON", "python")} -c "$CODE" | head -1',
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "CODE": code, "PATH": f"{Path(os.sys.executable).parent}:{env['PATH']}"},
    )
    assert pipeline.stdout.startswith("[traintel]")
    run_dir = next(tmp_path.iterdir())
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "finished" and summary["steps"] == 200
    assert step_numbers(run_dir) == list(range(1, 201))
    record(
        "stdout closed (`train.py | head -1`)",
        "training goes on; the run finishes",
        "200/200 steps; status finished; progress lines stop quietly",
    )
