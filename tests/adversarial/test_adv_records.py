"""The command line on hostile records: whatever a crashed, foreign or malicious writer left (lines
that are not JSON, known fields of the wrong type, times out of range, a metric that is a dict,
1,000-deep nesting, a 200 MB line, events.jsonl as a directory or a symlink loop), every command
answers, says what it skipped in one line, and never prints a traceback; listings go on past a
bad run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from adv_helpers import script_env
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_log import record
from traintel.cli import main
from traintel.record.reader import Records, last_records

COMMANDS = [
    ["logs", "summary", "{run}"],
    ["logs", "summary", "{run}", "--format", "json"],
    ["logs", "errors", "{run}", "-v"],
    ["logs", "tail", "{run}", "-n", "50"],
    ["logs", "tail", "{run}", "--format", "json"],
    ["logs", "grep", "loss", "{run}"],
    ["logs", "metrics", "{run}"],
    ["logs", "report", "{run}"],
    ["logs", "compare", "{run}", "{run}"],
    ["report", "{run}"],
    ["report", "{run}", "--format", "md"],
    ["status", "{run}"],
    ["status", "{run}", "--format", "json"],
]


def _good(i: int) -> dict:
    return {
        "ts": 1796000000.0 + i,
        "type": "step",
        "level": "info",
        "run": "r",
        "rank": 0,
        "step": i,
        "epoch": 0,
        "step_s": 0.1,
        "data_wait_s": 0.01,
        "metrics": {"loss": 1.0 / i, "samples": 8},
    }


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=True)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is the failure
    return result.exit_code, output


KEYS = [
    "ts",
    "type",
    "level",
    "run",
    "rank",
    "step",
    "epoch",
    "step_s",
    "data_wait_s",
    "metrics",
    "message",
    "traceback",
    "error_type",
    "severity",
    "exc_type",
    "hints",
    "event",
    "fields",
    "status",
    "duration_s",
    "steps",
    "is_best",
    "best",
    "config",
    "name",
    "project",
    "kind",
    "count",
    "mean",
    "operation",
    "percent",
    "eta_s",
]
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(
            [
                "step",
                "error",
                "eval",
                "event",
                "log",
                "run_start",
                "run_end",
                "instrument",
                "epoch",
                "milestone",
                "config",
                "nan",
                "info",
            ]
        ),
        st.sampled_from([1e20, -1e15, 253402300800.0, 0.0, 1e300]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
lines = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=12).map(orjson.dumps),
    st.builds(
        lambda good, key, value: orjson.dumps({**good, key: value}),
        st.builds(_good, st.integers(1, 1000)),
        st.sampled_from(KEYS),
        json_values,
    ),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.just(b"[" * 1000 + b"]" * 1000),
    st.just(b'{"type": "event", "fields": ' + b'{"a": ' * 900 + b"1" + b"}" * 901),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hostile=st.lists(lines, min_size=1, max_size=12))
def test_every_command_reads_hostile_lines_without_a_traceback(tmp_path_factory, hostile):
    run = tmp_path_factory.mktemp("hostile")
    good = [orjson.dumps(_good(i)) for i in range(1, 4)]
    (run / "events.jsonl").write_bytes(b"\n".join([good[0], *hostile, *good[1:]]) + b"\n")
    for command in COMMANDS:
        code, output = _cli(*(a.format(run=run) for a in command))
        assert "Traceback" not in output and code in (0, 1), (command, code, output)
    records = Records(run)
    steps = [r for r in records if r.get("type") == "step"]
    assert {s.get("step") for s in steps} >= {1, 2, 3}  # the good lines around the bad ones


def _write(path, lines):
    path.mkdir(parents=True)
    (path / "events.jsonl").write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n")


@pytest.fixture
def hostile_runs(tmp_path, monkeypatch):
    """A directory of runs as the issue found them, with good runs before and after."""
    root = tmp_path / "runs"
    _write(root / "a-good", [_good(i) for i in range(1, 6)])
    _write(
        root / "ts-out-of-range",
        [{**_good(1), "ts": 1e20}, {**_good(2), "ts": -1e15}, {**_good(3), "ts": "yesterday"}],
    )
    _write(root / "metric-dict", [_good(1), {**_good(2), "metrics": {"loss": {"mean": 1.0}}}])
    _write(
        root / "wrong-types",
        [
            {**_good(1), "step": "one", "rank": {"x": 1}, "level": 5},
            {"ts": 2.0, "type": "error", "error_type": [1], "hints": "x"},
        ],
    )
    (root / "events-dir" / "events.jsonl").mkdir(parents=True)
    (root / "loop").mkdir()
    os.symlink(root / "loop" / "events.jsonl", root / "loop" / "events.jsonl")
    (root / "bad-summary").mkdir()
    (root / "bad-summary" / "events.jsonl").write_bytes(orjson.dumps(_good(1)) + b"\n")
    (root / "bad-summary" / "summary.json").write_text(
        '{"status": {"x": 1}, "end_ts": 1e20, "loss": "low", "steps": "many"}'
    )
    _write(root / "z-good", [_good(i) for i in range(1, 4)])
    monkeypatch.setenv("TRAINTEL_DIR", str(root))
    return root


def test_listings_go_on_past_bad_runs(hostile_runs):
    code, output = _cli("status", "--all")
    assert code == 0 and "Traceback" not in output
    assert (
        "events-dir: could not read events.jsonl (a directory where traintel keeps a file" in output
    )
    listed = CliRunner().invoke(main, ["status", "--all", "--format", "json"])
    assert {Path(r["dir"]).name for r in orjson.loads(listed.stdout)} == {
        "a-good",
        "ts-out-of-range",
        "metric-dict",
        "wrong-types",
        "events-dir",
        "bad-summary",
        "z-good",
    }  # every run but the symlink loop, which is no run
    targets = [str(hostile_runs / name) for name in sorted(os.listdir(hostile_runs))]
    code, output = _cli("logs", "summary", *targets, "/nonexistent/run")
    assert code == 1 and output.count("Run ") == len(targets) - 1  # the symlink loop is no run
    assert "note: /nonexistent/run: no run record" in output
    assert "3 ts not a time" in output and "metrics value not a number" in output
    code, output = _cli("logs", "compare", str(hostile_runs))
    assert code == 0 and "z-good" in output
    record(
        "hostile records: ts 1e20 and -1e15, a metric that is a dict, wrong types, 1,000-deep "
        "nesting, events.jsonl a directory or a symlink loop, a bad summary.json",
        "every command answers with a one-line note of what it skipped; listings go on",
        "13 commands x 60 hypothesis record sets and the issue's cases: no traceback; "
        "status --all lists every run, the unreadable one with its reason",
    )


def test_a_200_mb_line_is_read_past_in_linear_time_and_bounded_memory(tmp_path):
    """Backwards reading used to copy the growing line once per 1 MiB block (16-18 s and 1 GB for
    200 MB); now the line's pieces are joined once, or, over 16 MiB, not kept at all."""
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "events.jsonl", "wb") as f:
        f.write(orjson.dumps(_good(1)) + b"\n")
        f.write(b'{"type": "event", "fields": {"blob": "')
        for _ in range(200):
            f.write(b"x" * 2**20)
        f.write(b'"}}\n')
        for i in range(2, 12):
            f.write(orjson.dumps(_good(i)) + b"\n")
    code = (
        "import sys, time, json\n"
        "from traintel.record.reader import Records, last_records\n"
        "records = Records(sys.argv[1]); t = time.perf_counter()\n"
        "tail = last_records(records, 20); backwards = time.perf_counter() - t\n"
        "t = time.perf_counter(); n = sum(1 for _ in Records(sys.argv[1]))\n"
        "forwards = time.perf_counter() - t\n"
        "print(json.dumps({'tail': len(tail), 'all': n, 'skipped': records.skipped,\n"
        "  'backwards_s': backwards, 'forwards_s': forwards,\n"
        "  'peak_mb': int(next(l.split()[1] for l in open('/proc/self/status')\n"
        "                      if l.startswith('VmHWM'))) / 1024}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(run)],
        capture_output=True,
        text=True,
        timeout=300,
        env=script_env(),
    )
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert result["tail"] == 11 and result["all"] == 11
    assert result["skipped"] == {"over 16 MiB": 1}
    assert result["peak_mb"] < 150, result  # the 200 MB line is never held
    started = time.perf_counter()
    code_cli, output = _cli("logs", "tail", str(run), "-n", "20")
    tail_s = time.perf_counter() - started
    assert code_cli == 0 and "skipped 1 line(s) (1 over 16 MiB)" in output
    record(
        "a 200 MB record line (tail, status, report read backwards)",
        "read past in one linear pass, not held in memory; skipped with its reason",
        f"last 20 lines in {result['backwards_s']:.2f} s, whole record in "
        f"{result['forwards_s']:.2f} s, peak memory {result['peak_mb']:.0f} MB (was 16-18 s "
        f"and 1 GB); `logs tail` {tail_s:.2f} s; 'skipped 1 line (over 16 MiB)'",
    )


def test_a_follower_reads_past_a_line_too_long_to_hold(tmp_path):
    from traintel.record.reader import Follower

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")
    records = Records(path)
    follower = Follower(path, records, from_start=True)
    with open(path, "ab") as f:
        f.write(
            orjson.dumps(_good(1))
            + b"\n"
            + b"y" * (17 * 2**20)
            + b"\n"
            + orjson.dumps(_good(2))
            + b"\n"
        )
    seen = []
    for _ in range(40):
        seen += follower.poll()
    follower.close()
    assert [r["step"] for r in seen] == [1, 2] and records.skipped == {"over 16 MiB": 1}


def test_a_line_of_the_wrong_shape_never_reaches_the_figures(tmp_path):
    run = tmp_path / "run"
    _write(
        run,
        [
            _good(1),
            {**_good(2), "metrics": {"loss": {"mean": 9.0}, "acc": 0.5}},
            {**_good(3), "ts": 1e300},
        ],
    )
    records = Records(run)
    lines = list(records)
    assert lines[1]["metrics"] == {"acc": 0.5} and "ts" not in lines[2]
    assert records.fixed == {"metrics value not a number": 1, "ts not a time": 1}
    assert last_records(Records(run), 2)[-1]["step"] in (2, 3)


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.one_of(
            st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
            st.integers(0, 200).map(lambda n: b"x" * n),
        ),
        max_size=30,
    ),
    newline_at_end=st.booleans(),
)
def test_forward_and_backward_reading_agree_with_split_at_every_block_edge(
    data, newline_at_end, tmp_path_factory
):
    """Both readers on tiny blocks and a tiny line limit: every block edge and every overlong
    line is a case (the same code reads 1 MiB blocks and 16 MiB lines)."""
    import io
    from unittest import mock

    from traintel.record import reader

    raw = b"\n".join(data) + (b"\n" if newline_at_end and data else b"")
    expected = raw.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    expected = [line if len(line) <= 50 else None for line in expected]
    path = tmp_path_factory.mktemp("lines") / "events.jsonl"
    path.write_bytes(raw)
    with mock.patch.object(reader, "MAX_LINE_BYTES", 50), mock.patch.object(reader, "_BLOCK", 7):
        forwards = list(reader.bounded_lines(io.BytesIO(raw)))
        backwards = list(reader._reversed_lines(path))
    assert forwards == expected
    assert [line for line in reversed(backwards) if line != b""] == [
        line for line in expected if line != b""
    ]
