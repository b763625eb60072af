"""A real run in a real clustered TSDB: Thanos Receive (three in one hashring, replication factor
2), Query and Ruler, beside Prometheus, both fed by one collector.

Thanos v0.42.4 is built from its Go module (stack/go/thanos, a wrapper that repeats its replace
block) on first use. The collector (our build, the pipeline of otel-collector/config.yaml) remote-
writes every metric both to a Prometheus with the repository's rules and to the Receive hashring;
a demo run exports to it. Then every panel query of every dashboard and every rule expression is
evaluated through Thanos Query and through Prometheus at the same instant, and must give the same
series with the same values; the Ruler evaluates the rules through Query without an error and
fires what Prometheus fires. One Receive is killed while the run writes and started again: the
collector's retries bring every sample in, none is lost.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from deploy_tools import REPO
from kube_fixture import _free_port
from stack_fixture import (
    PROOF_RUN,
    RULE_FILES,
    committed_rules,
    demo_command,
    demo_env,
    eventually,
    prometheus_query,
)
from traintel.stack import dashboards, install
from traintel.stack.components import DEPLOY_TOOLS

pytestmark = pytest.mark.slow

#: labels Thanos adds that a Prometheus of the same data does not have
THANOS_ONLY = {"receive_replica", "tenant_id", "ruler"}


@dataclass
class Proc:
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Stores:
    prometheus: str
    query: str
    ruler: str
    collector_otlp: str
    receivers: list[Proc]
    procs: dict[str, Proc] = field(default_factory=dict)


def _ready(url: str, proc: Proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc and proc.proc.poll() is None, (
            f"{proc.argv[0]} exited:\n{proc.log.read_text(errors='replace')[-3000:]}"
        )
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready:\n{proc.log.read_text(errors='replace')[-3000:]}")


def _launch(procs: dict[str, Proc], name: str, proc: Proc, http_port: int) -> None:
    """Start ``proc``, keep it in ``procs`` (stopped in reverse order at the end) and wait until
    its /-/ready answers."""
    proc.start()
    procs[name] = proc
    _ready(f"http://127.0.0.1:{http_port}/-/ready", proc)


def _binaries() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name, table in (("thanos", DEPLOY_TOOLS), ("prometheus", None), ("otelcol", None)):
        if table is not None:
            status = install.install([name], say=lambda _: None, table=table)
            reason = status.get(name, {}).get("reason", "unknown reason")
        else:
            reason = install.missing_reason(name) or ""
        path = install.binary(name)
        if path is None:
            pytest.skip(f"{name} is not available: {reason}")
        found[name] = path
    return found


def _collector_config(
    prometheus_write: str, receive_write: str, otlp_port: int, data: Path
) -> dict[str, Any]:
    """otel-collector/config.yaml's metrics path (processors, span metrics) with two remote
    writes: to Prometheus and to the Receive hashring (any of its members routes by hash)."""
    source = yaml.safe_load((REPO / "otel-collector/config.yaml").read_text())
    exporter = source["exporters"]["prometheus_remote_write"]

    def remote(endpoint: str, wal: str) -> dict[str, Any]:
        return {
            **exporter,
            "http": {**exporter["http"], "endpoint": endpoint},
            "wal": {**exporter["wal"], "directory": str(data / wal)},
        }

    return {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{otlp_port}"}}}},
        "processors": {k: source["processors"][k] for k in ("memory_limiter", "batch")},
        "connectors": {"span_metrics": source["connectors"]["span_metrics"]},
        "exporters": {
            "prometheus_remote_write/prometheus": remote(prometheus_write, "wal-prometheus"),
            "prometheus_remote_write/thanos": remote(receive_write, "wal-thanos"),
            "debug": {"verbosity": "basic"},
        },
        "extensions": {"health_check": {"endpoint": f"127.0.0.1:{_free_port()}"}},
        "service": {
            "extensions": ["health_check"],
            "telemetry": {"metrics": {"level": "none"}},
            "pipelines": {
                "metrics": {
                    "receivers": ["otlp", "span_metrics"],
                    "processors": ["memory_limiter", "batch"],
                    "exporters": [
                        "prometheus_remote_write/prometheus",
                        "prometheus_remote_write/thanos",
                    ],
                },
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "batch"],
                    "exporters": ["span_metrics"],
                },
                "logs": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "batch"],
                    "exporters": ["debug"],
                },
            },
        },
    }


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    bins = _binaries()
    root = tmp_path_factory.mktemp("thanos")
    rules = [str(p) for p in RULE_FILES]
    procs: dict[str, Proc] = {}
    grpc = [_free_port() for _ in range(3)]
    hashring = root / "hashring.json"
    hashring.write_text(
        json.dumps([{"hashring": "default", "endpoints": [f"127.0.0.1:{g}" for g in grpc]}])
    )
    receivers = []
    try:
        for i, g in enumerate(grpc):
            http, write = _free_port(), _free_port()
            receiver = Proc(
                [
                    str(bins["thanos"]),
                    "receive",
                    f"--tsdb.path={root / f'receive-{i}'}",
                    f"--grpc-address=127.0.0.1:{g}",
                    f"--http-address=127.0.0.1:{http}",
                    f"--remote-write.address=127.0.0.1:{write}",
                    # replication between receivers (Cap'n Proto): on loopback too
                    f"--receive.capnproto-address=127.0.0.1:{_free_port()}",
                    f"--receive.local-endpoint=127.0.0.1:{g}",
                    f"--receive.hashrings-file={hashring}",
                    "--receive.replication-factor=2",
                    f'--label=receive_replica="{i}"',
                    "--tsdb.retention=1d",
                    # as docs/kubernetes.md tells users and the stack's Prometheus has: concurrent
                    # remote-write requests and `traintel sync` arrive out of order
                    "--tsdb.out-of-order.time-window=7d",
                ],
                root / f"receive-{i}.log",
            )
            _launch(procs, f"receive-{i}", receiver, http)
            receivers.append(receiver)
            receiver.write = write  # type: ignore[attr-defined]
        query_http, ruler_http, ruler_grpc = _free_port(), _free_port(), _free_port()
        query = Proc(
            [
                str(bins["thanos"]),
                "query",
                f"--http-address=127.0.0.1:{query_http}",
                f"--grpc-address=127.0.0.1:{_free_port()}",
                *[f"--endpoint=127.0.0.1:{g}" for g in grpc],
                # the Ruler's recorded series and ALERTS (it starts after Query, which retries)
                f"--endpoint=127.0.0.1:{ruler_grpc}",
                "--query.replica-label=receive_replica",
            ],
            root / "query.log",
        )
        _launch(procs, "query", query, query_http)
        ruler = Proc(
            [
                str(bins["thanos"]),
                "rule",
                f"--data-dir={root / 'ruler'}",
                f"--http-address=127.0.0.1:{ruler_http}",
                f"--grpc-address=127.0.0.1:{ruler_grpc}",
                f"--query=127.0.0.1:{query_http}",
                "--eval-interval=5s",
                '--label=ruler="1"',
                *[f"--rule-file={r}" for r in rules],
            ],
            root / "ruler.log",
        )
        _launch(procs, "ruler", ruler, ruler_http)
        prom_port = _free_port()
        # the stack's prometheus.yml (its out-of-order window), rules every 5 s, no scraping
        source = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
        (root / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {**source["global"], "evaluation_interval": "5s"},
                    "storage": source["storage"],
                    "rule_files": rules,
                }
            )
        )
        prometheus = Proc(
            [
                str(bins["prometheus"]),
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--web.enable-remote-write-receiver",
            ],
            root / "prometheus.log",
        )
        _launch(procs, "prometheus", prometheus, prom_port)
        otlp = _free_port()
        config = root / "collector.yaml"
        config.write_text(
            yaml.safe_dump(
                _collector_config(
                    f"http://127.0.0.1:{prom_port}/api/v1/write",
                    f"http://127.0.0.1:{receivers[0].write}/api/v1/receive",  # type: ignore[attr-defined]
                    otlp,
                    root,
                )
            )
        )
        collector = Proc([str(bins["otelcol"]), "--config", str(config)], root / "collector.log")
        collector.start()
        procs["collector"] = collector
        time.sleep(1)
        assert collector.proc and collector.proc.poll() is None, collector.log.read_text()
        yield Stores(
            prometheus=f"http://127.0.0.1:{prom_port}",
            query=f"http://127.0.0.1:{query_http}",
            ruler=f"http://127.0.0.1:{ruler_http}",
            collector_otlp=f"http://127.0.0.1:{otlp}",
            receivers=receivers,
            procs=procs,
        )
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()


def _instant(base: str, expr: str, at: float) -> list[dict[str, Any]]:
    # dedup (Thanos Query's default, said here): one series of the two replicas; Prometheus
    # ignores the parameter
    return prometheus_query(base, expr, time=f"{at:.3f}", dedup="true")


def _by_labels(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted((k, v) for k, v in r["metric"].items() if k not in THANOS_ONLY)): float(
            r["value"][1]
        )
        for r in result
    }


@pytest.fixture(scope="module")
def demo(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A demo run exporting to the collector; one Receive is killed while it runs and started
    again after it."""
    runs = tmp_path_factory.mktemp("runs")
    run = subprocess.Popen(
        demo_command(
            *PROOF_RUN, "--project", "thanos", "--name", "hashring", "--step-sleep", "0.2"
        ),
        env=demo_env(stores.collector_otlp, runs, progress="off"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    eventually(
        lambda: _instant(stores.prometheus, 'traintel_steps_total{project="thanos"}', time.time()),
        120,
        interval=0.5,
        what="the run's first steps",
    )
    victim = stores.receivers[1]
    victim.stop(signal.SIGKILL)
    time.sleep(6)
    victim.start()
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out[-3000:]
    summary = json.loads((next(runs.iterdir()) / "summary.json").read_text())
    selector = f'traintel_steps_total{{run="{summary["run"]}"}}'

    def arrived(base: str) -> bool:
        result = _instant(base, selector, time.time())
        return bool(result) and float(result[0]["value"][1]) == summary["steps"]

    eventually(lambda: arrived(stores.prometheus), 120, what="the run in Prometheus")
    eventually(lambda: arrived(stores.query), 180, what="the run through Thanos Query")
    return summary


def _promql() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard panel/annotation query and every rule."""
    out = [
        (f"{q.dashboard}: {q.title}", q.expr)
        for q in dashboards.queries()
        if q.datasource == "prometheus" and q.kind != "variable"
    ]
    for rule in committed_rules():
        out.append((f"rule {rule.get('alert') or rule['record']}", rule["expr"]))
    return out


#: series that Prometheus and the Ruler each compute by evaluating rules on their own schedule:
#: the same series, but values taken at different instants
EVALUATED = re.compile(r"\b(ALERTS\w*|[a-z_]+:[a-z0-9_:]+)\b")


def _compare(stores: Stores, variables: dict[str, str]) -> tuple[list[Any], int]:
    at = time.time() - 5
    differ = []
    nonempty = 0
    for where, expr in _promql():
        query = dashboards.expand(expr, variables)
        want = _by_labels(_instant(stores.prometheus, query, at))
        got = _by_labels(_instant(stores.query, query, at))
        nonempty += bool(want)
        if set(want) != set(got):
            differ.append((where, query, want, got))
        elif not EVALUATED.search(query) and any(
            abs(want[k] - got[k]) > 1e-9 * max(1.0, abs(want[k]))
            for k in want
            if want[k] == want[k]
        ):  # NaN on both sides is equal
            differ.append((where, query, want, got))
    return differ, nonempty


def test_every_query_gives_the_same_answer_through_thanos(
    stores: Stores, demo: dict[str, Any]
) -> None:
    """Raw series: the same values at the same instant; series the rules compute (recorded,
    ALERTS): the same series once both evaluators have run over the finished run."""
    variables = {"project": "thanos", "run": demo["run"]}
    result: tuple[list[Any], int] = ([], 0)

    def same() -> bool:
        nonlocal result
        result = _compare(stores, variables)
        return not result[0]

    try:
        eventually(same, 60, interval=5, what="the same answers")
    except AssertionError:
        raise AssertionError(f"{len(result[0])} queries differ, e.g. {result[0][:2]}") from None
    assert result[1] > len(_promql()) // 3, "most queries must have data for the comparison"


def test_a_killed_receive_lost_no_sample(stores: Stores, demo: dict[str, Any]) -> None:
    """Every sample Prometheus has of the run (timestamp and value), Thanos has too after
    deduplication, though one Receive of the hashring was killed while the run wrote."""
    expr = f'{{run="{demo["run"]}", __name__=~"traintel_.*"}}[1h]'
    at = time.time()

    def samples(base: str) -> dict[tuple[tuple[str, str], ...], list[tuple[float, str]]]:
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k not in THANOS_ONLY)): [
                (float(ts), value) for ts, value in r["values"]
            ]
            for r in _instant(base, expr, at)
        }

    want, got = samples(stores.prometheus), samples(stores.query)
    assert len(want) > 20 and sum(map(len, want.values())) > 200
    assert set(want) == set(got)
    missing = {k: len(want[k]) - len(got[k]) for k in want if want[k] != got[k]}
    assert not missing, f"samples missing through Thanos: {missing}"


def test_the_ruler_evaluates_every_rule_through_query(stores: Stores, demo: dict[str, Any]) -> None:
    def evaluated() -> list[dict[str, Any]]:
        groups = requests.get(f"{stores.ruler}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return (
            rules
            if rules
            and all(
                r.get("lastEvaluation", "").startswith("20")
                and not r["lastEvaluation"].startswith("0001")
                for r in rules
            )
            else []
        )

    rules = eventually(evaluated, 60, what="the Ruler to evaluate every rule")
    assert [r["name"] for r in rules if r["health"] != "ok"] == []
    assert len(rules) == len(committed_rules())

    def alerts(base: str) -> set[tuple[str, str]]:
        # the rules API (Prometheus's, which the Ruler serves too) lists each rule's alerts
        body = requests.get(f"{base}/api/v1/rules", params={"type": "alert"}, timeout=10).json()
        assert body.get("status") == "success", (base, body)
        return {
            (a["labels"]["alertname"], a["state"])
            for g in body["data"]["groups"]
            for r in g["rules"]
            for a in r.get("alerts") or []
            if a["labels"].get("run") == demo["run"]
        }

    # both evaluate every 5 s over the same samples: the same alerts, in the same state
    eventually(
        lambda: alerts(stores.prometheus) and alerts(stores.prometheus) == alerts(stores.ruler),
        60,
        what="the Ruler's alerts to be Prometheus's",
    )
