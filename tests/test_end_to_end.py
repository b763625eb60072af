"""The proof of the stack: a real demo training run through the real collector into the real
Prometheus (and into Loki's OTLP endpoint: a real Loki where one is supplied, else the sink);
every dashboard query and recording rule returns data for that run, the values match the run's
local record, and a stalled run's alert reaches Alertmanager."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

import loki_model
from stack_fixture import (
    PROOF_RUN,
    committed_rules,
    demo_command,
    demo_env,
    evaluate_every_second,
    eventually,
    promql,
    require,
)
from traintel.core import catalog
from traintel.stack import dashboards, rules

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[1]
#: metrics that have no series on a machine without an NVIDIA GPU ("no series", not an error)
GPU_ONLY = {m.name for m in catalog.METRICS if m.group in ("gpu", "cuda")}
#: log lines only a GPU produces (the NVML sampler's Xid events)
GPU_ONLY_LOGS = 'event="gpu_xid"'


@pytest.fixture(scope="module")
def fast_rules(stack, tmp_path_factory):
    """Evaluate rules every second and add the stalled-run alert rendered with a 3 s threshold
    and no `for` (traintel.stack.rules.Config), so a real stall can be seen firing within a test.
    Prometheus reloads its config on SIGHUP."""
    config = rules.Config(stall_seconds=3, stall_for="0s")
    groups = yaml.safe_load(rules.render("alerts", config))["groups"]
    stalled = next(r for g in groups for r in g["rules"] if r.get("alert") == "TrainingRunStalled")
    rule_file = tmp_path_factory.mktemp("rules") / "fast-stall.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "test-fast", "rules": [stalled]}]}))
    evaluate_every_second(stack, rule_file)

    def loaded():
        groups = requests.get(f"{stack.endpoints['prometheus']}/api/v1/rules", timeout=5).json()[
            "data"
        ]["groups"]
        return any(g["name"] == "test-fast" for g in groups)

    eventually(loaded, 30, what="Prometheus to load the test rule file")
    return rule_file


@pytest.fixture(scope="module")
def demo(stack, fast_rules, tmp_path_factory):
    """One real demo run (CLI, subprocess) exporting to the native stack."""
    runs = tmp_path_factory.mktemp("runs")
    proc = subprocess.run(
        demo_command(*PROOF_RUN, "--project", "e2e", "--name", "proof", "--step-sleep", "0.05"),
        env=demo_env(stack.endpoints["otlp_http"], runs),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next(runs.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    selector = f'{{run="{summary["run"]}"}}'

    def arrived():
        result = promql(stack, f"traintel_steps_total{selector}")
        return result and float(result[0]["value"][1]) == summary["steps"]

    eventually(arrived, what="the run's final step count in Prometheus")
    return summary, run_dir


def _scalar(stack, expr):
    result = promql(stack, expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def test_values_in_prometheus_match_the_local_record(stack, demo):
    summary, _ = demo
    run = f'run="{summary["run"]}"'
    assert _scalar(stack, f"traintel_steps_total{{{run}}}") == summary["steps"] == 80
    assert _scalar(stack, f"traintel_samples_total{{{run}}}") == summary["samples"]
    assert _scalar(stack, f"traintel_tokens_total{{{run}}}") == summary["tokens"]
    assert _scalar(stack, f"traintel_loss{{{run}}}") == pytest.approx(summary["loss"]["final"])
    assert _scalar(stack, f"traintel_nonfinite_loss_total{{{run}}}") == 1
    assert _scalar(stack, f'traintel_eval_best{{{run},metric="val_loss"}}') == pytest.approx(
        summary["eval"]["val_loss"]["best"]
    )
    assert _scalar(stack, f'traintel_run_status{{{run},status="finished"}}') == 1
    assert _scalar(stack, f'traintel_errors_total{{{run},error_type="data"}}') == 1
    assert _scalar(stack, f"traintel_step_duration_seconds_count{{{run}}}") == summary["steps"]
    labels = promql(stack, f"traintel_loss{{{run}}}")[0]["metric"]
    assert {labels["project"], labels["rank"]} == {"e2e", "0"}
    # the rate gauges and UpDownCounters keep their catalog names
    assert _scalar(stack, f"traintel_samples_per_second{{{run}}}") > 0
    assert _scalar(stack, f"traintel_host_memory_used_bytes{{{run}}}") > 0
    info = promql(stack, f"traintel_run_info{{{run}}}")[0]["metric"]
    assert info["hostname"] and "host" not in info  # one host label: the GPU series' too


def _script(stack, runs: Path, name: str, body: str) -> subprocess.CompletedProcess[str]:
    """A small training script (a run named ``name``, then ``body``) exporting to the stack
    (1 s export interval) and recording under ``runs``, run to its end."""
    script = (
        "import traintel\n"
        f"run = traintel.init(project='e2e', name={name!r}, progress='off', "
        "sample_interval=0)\n" + body
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        env=demo_env(stack.endpoints["otlp_http"], runs),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _script_run(stack, tmp_path: Path, name: str, body: str) -> str:
    """A small training script exporting to the stack, finishing its run; its run id."""
    proc = _script(stack, tmp_path, name, body + "run.finish()\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(p.name for p in tmp_path.iterdir() if (p / "summary.json").exists())


def test_a_spike_and_a_nan_between_two_exports_reach_prometheus(stack, tmp_path):
    """Within one export interval: a loss spike and a NaN, then back to normal. The latest
    value alone (traintel_loss) never shows either; the interval's max and the non-finite
    count do, in the real Prometheus."""
    run_id = _script_run(
        stack,
        tmp_path,
        "spike",
        (
            "import time\n"
            "for i in range(20):\n"
            "    run.log(loss=1.0 + i / 100)\n"
            "    time.sleep(0.1)\n"
            "for loss in (1.0, 100.0, float('nan'), 1.0):\n"  # microseconds apart
            "    run.log(loss=loss)\n"
            "time.sleep(2)\n"
        ),
    )
    selector = f'{{run="{run_id}", metric="loss"}}'
    # the last export counts all 24 values; exports arrive in order (the collector's WAL), so
    # once it is in Prometheus every earlier window is too
    eventually(
        lambda: promql(stack, f"traintel_logged_values_total{selector} == 24"),
        what="the run's last export in Prometheus",
    )
    spike = promql(stack, f"max_over_time(traintel_logged_max{selector}[10m])")
    assert float(spike[0]["value"][1]) == 100.0
    nans = promql(stack, f"traintel_logged_nonfinite_total{selector}")
    assert float(nans[0]["value"][1]) == 1
    assert _scalar(stack, f'traintel_nonfinite_loss_total{{run="{run_id}"}}') == 1
    latest = _scalar(stack, f'max_over_time(traintel_loss{{run="{run_id}"}}[10m])')
    assert latest < 2, "the latest-value series alone saw the spike: the test proves nothing"


@pytest.fixture(scope="module")
def two_runs(stack, tmp_path_factory):
    """Two runs whose losses differ at every step, for the by-step panels."""
    ids = []
    for name, scale in (("by-step-a", 1.0), ("by-step-b", 2.0)):
        ids.append(
            _script_run(
                stack,
                tmp_path_factory.mktemp(name),
                name,
                (
                    "import time\n"
                    "for i in range(1, 61):\n"
                    f"    run.log(loss={scale} / i, lr=0.01, grad_norm={scale})\n"
                    "    if i % 20 == 0:\n"
                    f"        run.log_eval(val_loss={scale} / i)\n"
                    "    time.sleep(0.1)\n"
                ),
            )
        )
    for run_id in ids:  # both runs' final exports are in before any panel is queried
        eventually(
            lambda: promql(stack, f'traintel_steps_total{{run="{run_id}"}} == 60'),
            what=f"run {run_id}'s last step in Prometheus",
        )
    return ids


def _range(stack, expr: str, seconds: int = 600, end: int | None = None) -> list[dict]:
    """A range query at 1 s resolution ending at ``end`` (whole seconds: one grid for all)."""
    end = end or int(time.time())
    body = requests.get(
        f"{stack.endpoints['prometheus']}/api/v1/query_range",
        params={"query": expr, "start": end - seconds, "end": end, "step": "1s"},
        timeout=30,
    ).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_by_step_panels_return_the_step_axis_and_the_values_for_two_runs(stack, two_runs):
    """Each by-step panel's queries, run as Grafana runs them (range, one sample per second),
    then joined as its transformations do (rows merged on time and labels, partitioned by run):
    every run gets a rising step axis from 1 to its last step, with a value at each step."""
    board = dashboards.load()["run-comparison"]
    panels = [p for p in board["panels"] if p["type"] == "xychart"]
    assert {p["title"] for p in panels} >= {
        "Loss by step",
        "Learning rate by step",
        "Gradient norm by step",
        "Eval metrics by step",
    }
    values = {"project": "e2e", "run": "|".join(two_runs)}
    for panel in panels:
        by = panel["transformations"][-1]["options"]["fields"]
        tables = []
        for target in panel["targets"]:
            assert target["format"] == "table" and target["range"]
            eventually(
                lambda: _range(stack, dashboards.expand(target["expr"], values)),
                60,
                what=f"{panel['title']}: {target['refId']}",
            )
        end = int(time.time())  # every query of the panel on the same time grid, as Grafana does
        for target in panel["targets"]:
            rows = {}
            for series in _range(stack, dashboards.expand(target["expr"], values), end=end):
                key = tuple(series["metric"].get(label, "") for label in by)
                for ts, value in series["values"]:
                    rows[(ts, key)] = float(value)
            tables.append(rows)
        steps, *curves = tables
        for run_id in two_runs:
            joined = sorted(
                (ts, steps[(ts, key)], [c.get((ts, key)) for c in curves])
                for (ts, key) in steps
                if key[0] == run_id
            )
            joined = [row for row in joined if all(v is not None for v in row[2])]
            assert len(joined) >= 3, f"{panel['title']}: {run_id} has {len(joined)} points"
            axis = [step for _, step, _ in joined]
            assert axis == sorted(axis) and axis[-1] == 60, (panel["title"], axis[-5:])
            assert all(v == v for _, _, vs in joined for v in vs)  # no NaN on the curve
    loss = dashboards.expand(
        next(p for p in panels if p["title"] == "Loss by step")["targets"][1]["expr"],
        {**values, "smooth": "1s"},
    )
    last = {s["metric"]["run"]: s["values"][-1] for s in _range(stack, loss)}
    assert set(last) == set(two_runs)
    for run_id, scale in zip(two_runs, (1.0, 2.0)):
        (raw,) = promql(stack, f'traintel_loss{{run="{run_id}"}}[1d]')
        samples = [(float(t), float(v)) for t, v in raw["values"]]
        assert samples[-1][1] == pytest.approx(scale / 60)  # the last export: the last step's
        # the panel's last point: the last export's loss, averaged with the one before where both
        # fall in its one-second window (the final export follows the last periodic one by < 1 s)
        at, shown = float(last[run_id][0]), float(last[run_id][1])
        window = [v for t, v in samples if at - 1 < t <= at]
        assert window and window[-1] == samples[-1][1], (at, samples[-3:])
        assert shown == pytest.approx(sum(window) / len(window))


def _recording_rules() -> dict[str, str]:
    return {r["record"]: r["expr"] for r in committed_rules() if "record" in r}


def _expected_empty(expr: str) -> bool:
    """True for queries that read GPU metrics (directly or through recording rules): joined with
    a GPU series, or DCGM's, a training series selects nothing here either."""
    recorded = _recording_rules()
    for name in set(re.findall(r"traintel:[a-z0-9_:]+", expr)) & set(recorded):
        expr = expr.replace(name, recorded[name])
    names = set(re.findall(r"traintel_[a-z0-9_]+", expr))
    return bool(names & GPU_ONLY) or "DCGM_FI_" in expr


def _data_or_none(stack, expr: str):
    """The query's result; span metrics are flushed every 15 s, so give slow ones time."""
    try:
        return eventually(lambda: promql(stack, expr), 60, interval=3, what=expr)
    except AssertionError:
        return None


def test_every_dashboard_prometheus_query_returns_data_for_the_run(stack, demo):
    summary, _ = demo
    # By-step panels are range queries smoothed over $smooth; evaluated once, now, their window
    # must reach back over the run (test_by_step_panels_... runs them as range queries).
    values = {"project": "e2e", "run": summary["run"], "runs": summary["run"], "smooth": "30m"}
    empty, checked = [], 0
    for query in dashboards.queries():
        if query.datasource != "prometheus":
            continue
        expr = dashboards.expand(query.expr, values)
        if query.kind == "variable":
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", expr.strip())
            assert match, query
            response = requests.get(
                f"{stack.endpoints['prometheus']}/api/v1/label/{match[2]}/values",
                params={"match[]": match[1]},
                timeout=10,
            ).json()
            result = response["data"]
        elif _expected_empty(expr):
            result = promql(stack, expr)
            assert result == [], f"{query.title}: GPU series on a machine without GPU?"
        else:
            result = _data_or_none(stack, expr)
        checked += 1
        if not result and not _expected_empty(expr):
            empty.append(f"{query.dashboard} / {query.title}: {expr}")
    assert checked > 20
    assert not empty, "queries with no data:\n" + "\n".join(empty)


def test_every_recording_rule_returns_data_for_the_run(stack, demo):
    summary, _ = demo
    missing = [
        name
        for name, rule in _recording_rules().items()
        if not _expected_empty(rule)
        and _data_or_none(stack, f'{name}{{run="{summary["run"]}"}}') is None
    ]
    assert not missing, f"recording rules without data for the run: {missing}"


@pytest.fixture(scope="module")
def crashed(stack, tmp_path_factory):
    """A run that fails, for the panels that show crashes."""
    runs = tmp_path_factory.mktemp("crash")
    proc = _script(stack, runs, "crash", "run.log(loss=1.0)\nraise RuntimeError('boom')\n")
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr
    return next(runs.iterdir()).name


def _loki(stack, expr: str) -> list:
    response = requests.get(
        f"{stack.endpoints['loki']}/loki/api/v1/query_range",
        params={
            "query": expr,
            "start": int((time.time() - 3600) * 1e9),
            "end": int(time.time() * 1e9),
            "limit": 1000,
        },
        timeout=20,
    ).json()
    assert response["status"] == "success", (expr, response)
    return response["data"]["result"]


def test_every_loki_panel_shows_the_runs_logs(stack, demo, crashed):
    """A finished run and a crashed one, selected together as the run picker would."""
    require(stack, "loki")
    summary, _ = demo
    runs = f"{summary['run']}|{crashed}"
    values = {"project": "e2e", "run": runs, "runs": runs}
    panels: dict[str, bool] = {}
    for query in dashboards.queries():
        if query.datasource != "loki" or query.kind == "variable":
            continue
        key = f"{query.dashboard} / {query.kind} {query.title}"
        if GPU_ONLY_LOGS in query.expr or panels.get(key):
            continue  # no Xid without a GPU; a panel shows data when any of its queries does
        expr = dashboards.expand(query.expr, values)
        try:
            eventually(lambda: _loki(stack, expr), 30, interval=2, what=expr)
            panels[key] = True
        except AssertionError:
            panels.setdefault(key, False)
    empty = [key for key, found in panels.items() if not found]
    assert panels and not empty, f"Loki panels with no data: {empty}"


def test_every_loki_query_selects_the_runs_logs_as_loki_would_store_them(stack, demo, crashed):
    """Without a Loki binary: the records our collector sent to Loki's OTLP endpoint (received
    by the sink), mapped as Loki 3.7's documented OTLP mapping stores them. Every dashboard and
    annotation query, parsed by Grafana's LogQL grammar, names only fields these records have,
    and each Loki panel selects lines of the two runs, as the run picker would show them."""
    if "loki" not in stack.sink_covers:
        pytest.skip("a real Loki runs: test_every_loki_panel_shows_the_runs_logs queries it")
    summary, _ = demo
    runs = {summary["run"], crashed}
    values = {"project": "e2e", "run": "|".join(sorted(runs)), "runs": "|".join(sorted(runs))}
    queries = [
        (q, dashboards.expand(q.expr, values))
        for q in dashboards.queries()
        if q.datasource == "loki" and q.kind != "variable"
    ]
    parsed = loki_model.parse([expr for _, expr in queries])

    def arrived():
        entries = [
            e for e in loki_model.entries(stack.sink_file("logs")) if e.labels.get("run") in runs
        ]
        ended = {e.labels["run"] for e in entries if e.metadata.get("type") == "run_end"}
        return entries if ended == runs else None

    entries = eventually(arrived, 90, interval=2, what="both runs' final log records at Loki")
    fields = {name for e in entries for name in e.fields}
    assert {"service_name", "project", "run", "rank", "severity_text", "trace_id"} <= fields
    panels: dict[str, bool] = {}
    for (query, expr), tree in zip(queries, parsed):
        assert tree["errors"] == [], expr
        used = {m["label"] for m in tree["matchers"]} | set(tree["grouping"])
        assert used <= fields, f"{query.title}: {sorted(used - fields)} never reach Loki"
        key = f"{query.dashboard} / {query.kind} {query.title}"
        selected = [e for e in entries if loki_model.selects(tree, e)]
        if GPU_ONLY_LOGS in query.expr:
            assert not selected, f"{query.title}: Xid events on a machine without GPU?"
            continue
        panels[key] = panels.get(key, False) or bool(selected)
    empty = [key for key, found in panels.items() if not found]
    assert len(panels) >= 7 and not empty, f"Loki panels that would show nothing: {empty}"


def test_a_stalled_run_fires_the_alert_in_alertmanager(stack, fast_rules, tmp_path):
    proc = subprocess.Popen(
        demo_command(
            "--epochs",
            "1",
            "--steps-per-epoch",
            "50",
            "--batch-size",
            "16",
            "--project",
            "e2e",
            "--name",
            "stall",
            "--pause-at-step",
            "5",
            "--pause-seconds",
            "120",
            "--sample-interval",
            "1",
        ),
        env=demo_env(stack.endpoints["otlp_http"], tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_dir = eventually(lambda: next(tmp_path.iterdir(), None), 60, what="the run dir")
        run_id = run_dir.name

        def alert():
            alerts = requests.get(
                f"{stack.endpoints['alertmanager']}/api/v2/alerts",
                params={"filter": f'run="{run_id}"'},
                timeout=5,
            ).json()
            return [a for a in alerts if a["labels"]["alertname"] == "TrainingRunStalled"]

        fired = eventually(alert, 90, what="TrainingRunStalled in Alertmanager")
        labels = fired[0]["labels"]
        assert labels["severity"] == "critical" and labels["project"] == "e2e"
        assert fired[0]["annotations"]["runbook_url"] == rules.runbook_url(
            rules.Config(), "TrainingRunStalled"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["steps"] >= 4  # ended by SIGTERM


def test_the_demo_without_a_collector_keeps_a_full_record_and_tries_no_export(tmp_path):
    """No stack needed: the collector's port is closed, so the demo records locally only."""
    result = subprocess.run(
        demo_command(
            "--epochs",
            "1",
            "--steps-per-epoch",
            "20",
            "--batch-size",
            "8",
            "--sample-interval",
            "0",
        ),
        env={
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
            "TRAINTEL_DIR": str(tmp_path),
            "TRAINTEL_PROGRESS": "lines",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no collector at http://127.0.0.1:9: local record only" in result.stderr
    assert "telemetry export" not in result.stderr, result.stderr  # no failures, no wait
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 20
