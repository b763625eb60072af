"""Soak: several ranks train against the native stack while the collector is killed and
restarted, Prometheus is stopped and started and a rank is preempted and resumed; then the
records are checked against Prometheus.

``make soak`` (a few minutes) or ``make soak ARGS="--minutes 30"``; not part of ``make test``.
The stack is the repository's own (configs, rules, 15 s scrapes), started natively on free
loopback ports in a temporary directory, with the sink standing in for Loki and Tempo where
they cannot run. Checks (each printed, any failure exits 1):

- the record against Prometheus after ``traintel sync``: final steps, samples and tokens
  equal; no counter sample lower than the one before it in any series of the run; every loss
  sample equal to the record's loss at the step Prometheus has at the same time; no gap in
  ``traintel_steps_total`` longer than the live reader's own cadence (``LATE`` intervals: it
  collects an interval after its previous export returned) but where a rank was preempted,
  collector outages included, once sync has filled them;
- the alerts: StackComponentRestarting and RunExportsFailing must fire; the training and run
  alerts and StackComponentDown must not;
- step time (the record's ``step_s``) during faults against quiet periods, p50/p95/p99;
- resident memory of each training process from its 200th step to its last.

The figures go to ``benchmarks/results/soak.json``; ``scripts/reliability_report.py`` puts
them into docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "soak.json"

#: seconds between a rank's metric exports (the issue's soak: 5 s windows)
INTERVAL_S = 5.0
#: seconds a training step sleeps (20 steps/s per rank)
PACE_S = 0.05

RANK = textwrap.dedent("""\
    import itertools, json, os, sys, time, traintel
    deadline, out = float(sys.argv[1]), sys.argv[2]

    def rss():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    run = traintel.init(project="soak", run_id=os.environ["SOAK_RUN"], name="soak",
                        progress="off", sample_interval=0, resume=True)
    with open(out, "a") as memory:
        for n in run.track(itertools.count(1)):
            time.sleep(%(pace)r)
            step = run.state.step
            run.log(loss=0.5 + 1.5 / (1 + step / 300), samples=8, tokens=256)
            if step %% 100 == 0:
                run.log_eval(val_loss=0.6 + 1.0 / (1 + step / 300))
            if step %% 50 == 0:
                run.event("soak_marker", step=step)
            if n %% 200 == 0:
                memory.write(json.dumps({"t": time.time(), "rss": rss(), "n": n}) + "\\n")
                memory.flush()
            if time.time() > deadline:
                break
    run.finish()
    """) % {"pace": PACE_S}

#: alerts that must fire, and those that must not, during the soak
MUST_FIRE = ("StackComponentRestarting", "RunExportsFailing")
MUST_NOT_FIRE = (
    "TrainingRunStalled",
    "RunFailed",
    "RunStoppedReporting",
    "LossNotFinite",
    "LossDiverging",
    "ThroughputDropped",
    "ErrorRateHigh",
    "StackComponentDown",
)


def schedule(duration: float) -> list[tuple[float, str, float]]:
    """(start offset, fault, seconds down): four collector kills at least 30 s apart (so that
    each restart is scraped), Prometheus stopped, one rank preempted and resumed."""
    scale = duration / 240.0
    return [
        (0.12 * duration, "kill collector", 20 * scale),
        (0.30 * duration, "kill collector", 15 * scale),
        (0.42 * duration, "stop prometheus", 30 * scale),
        (0.58 * duration, "kill collector", 25 * scale),
        (0.66 * duration, "preempt rank", 10 * scale),
        (0.80 * duration, "kill collector", 15 * scale),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make soak", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=4.0, help="how long the ranks train (default: %(default)s)"
    )
    parser.add_argument("--ranks", type=int, default=4, help="default: %(default)s")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from traintel.stack import install, native

    missing = [
        r for r in map(install.missing_reason, ("otelcol", "prometheus", "alertmanager")) if r
    ]
    if missing:
        print("soak: " + "; ".join(missing) + " (run `traintel stack install`)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="traintel-soak-"))
    stack = native.NativeStack(work / "stack", ports=native.free_ports(), sink=True)
    try:
        stack.up(
            names=("otelcol", "prometheus", "alertmanager", native.SINK.name),
            say=lambda line: print(f"soak: {line}"),
        )
        figures = soak(stack, work, args.minutes * 60, args.ranks)
    finally:
        stack.down()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    figures["machine"] = (
        f"{os.cpu_count()} CPU cores, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(figures, indent=1) + "\n")
    failed = [name for name, ok in figures["checks"].items() if not ok]
    print(f"soak: figures in {RESULT.relative_to(ROOT)}")
    print("soak: " + ("FAILED: " + ", ".join(failed) if failed else "every check passed"))
    return 1 if failed else 0


def soak(stack: Any, work: Path, duration: float, ranks: int) -> dict[str, Any]:
    runs, memory = work / "runs", work / "memory"
    memory.mkdir(parents=True)
    run_id = f"soak-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.endpoints["otlp_http"],
        "OTEL_METRIC_EXPORT_INTERVAL": str(int(INTERVAL_S * 1000)),
        "TRAINTEL_DIR": str(runs),
        "SOAK_RUN": run_id,
        "WORLD_SIZE": str(ranks),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.time()
    deadline = started + duration

    def rank(r: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", RANK, str(deadline), str(memory / f"rank-{r}-{time.time_ns()}")],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    procs = {r: rank(r) for r in range(ranks)}
    faults: list[dict[str, Any]] = []
    for offset, fault, down_s in schedule(duration):
        time.sleep(max(0.0, started + offset - time.time()))
        began = time.time()
        if fault == "kill collector":
            pid = stack.pid("otelcol")
            if pid:
                os.kill(pid, signal.SIGKILL)
            stack.stop("otelcol")  # reaps it
            time.sleep(down_s)
            stack.start("otelcol")
        elif fault == "stop prometheus":
            stack.stop("prometheus")
            time.sleep(down_s)
            stack.start("prometheus")
        else:
            victim = ranks - 1
            procs[victim].send_signal(signal.SIGTERM)
            procs[victim].wait(timeout=60)
            time.sleep(down_s)
            procs[victim] = rank(victim)
        faults.append({"fault": fault, "from": began, "to": time.time()})
        print(f"soak: {fault} at +{began - started:.0f} s for {time.time() - began:.0f} s")
    for proc in procs.values():
        proc.wait(timeout=duration + 300)
    trained = time.time() - started
    time.sleep(2 * INTERVAL_S)  # the last exports
    synced = subprocess.run(
        [
            sys.executable,
            "-m",
            "traintel.cli",
            "sync",
            "--endpoint",
            stack.endpoints["otlp_http"],
            str(runs / run_id),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(f"soak: traintel sync exit {synced.returncode}")
    time.sleep(15)  # the collector's write-ahead log is read every 5 s
    return check(
        stack, runs / run_id, run_id, ranks, faults, started, trained, memory, synced.returncode
    )


def _query(stack: Any, expr: str) -> list[dict[str, Any]]:
    body = requests.get(
        f"{stack.endpoints['prometheus']}/api/v1/query", params={"query": expr}, timeout=60
    ).json()
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _lines(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("events*.jsonl")):
        for raw in path.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                pass
    return sorted(out, key=lambda line: line.get("ts", 0))


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "n": len(ordered),
        "p50_ms": round(at(0.50), 2),
        "p95_ms": round(at(0.95), 2),
        "p99_ms": round(at(0.99), 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def check(
    stack: Any,
    run_dir: Path,
    run_id: str,
    ranks: int,
    faults: list[dict[str, Any]],
    started: float,
    trained: float,
    memory: Path,
    sync_rc: int,
) -> dict[str, Any]:
    from traintel.sync.timeline import LATE

    window = f"[{int(time.time() - started) + 600}s]"
    collector = [(f["from"], f["to"]) for f in faults if f["fault"] == "kill collector"]
    per_rank: dict[str, Any] = {}
    decreases: list[str] = []
    series_checked = 0
    for one in _query(
        stack, f'{{__name__=~"traintel_.+(_total|_count|_sum|_bucket)",run="{run_id}"}}{window}'
    ):
        values = [float(v) for _, v in one["values"]]
        series_checked += 1
        drops = sum(1 for a, b in zip(values, values[1:]) if b < a)
        if drops:
            decreases.append(f"{one['metric'].get('__name__')} {one['metric']}: {drops}")
    fault_steps: list[float] = []
    quiet_steps: list[float] = []
    loss_compared = loss_mismatched = 0
    worst_gap_outside = worst_gap_inside = 0.0
    unexplained_gaps = 0
    gaps: list[dict[str, Any]] = []
    for r in range(ranks):
        lines = _lines(run_dir / f"rank-{r}")
        steps = [line for line in lines if line.get("type") == "step"]
        summary = json.loads((run_dir / f"rank-{r}" / "summary.json").read_text())
        loss_at = {s["step"]: s["metrics"]["loss"] for s in steps if "loss" in s.get("metrics", {})}
        for s in steps:
            if s.get("step_s") is None:
                continue
            busy = any(
                a - 1 <= s["ts"] <= b + INTERVAL_S
                for a, b in [(f["from"], f["to"]) for f in faults]
            )
            (fault_steps if busy else quiet_steps).append(s["step_s"])
        labels = f'run="{run_id}",rank="{r}"'
        final = {}
        for name in ("traintel_steps_total", "traintel_samples_total", "traintel_tokens_total"):
            got = _query(stack, f"last_over_time({name}{{{labels}}}{window})")
            final[name] = float(got[0]["value"][1]) if got else None
        steps_series = _query(stack, f"traintel_steps_total{{{labels}}}{window}")
        loss_series = _query(stack, f"traintel_loss{{{labels}}}{window}")
        step_at = {t: float(v) for t, v in steps_series[0]["values"]} if steps_series else {}
        for t, v in loss_series[0]["values"] if loss_series else []:
            if t in step_at and int(step_at[t]) in loss_at:
                loss_compared += 1
                loss_mismatched += float(v) != float(loss_at[int(step_at[t])])
        times = sorted(step_at)
        first_ts = min(s["ts"] for s in steps)
        for a, b in zip(times, times[1:]):
            gap = b - a
            if r == ranks - 1 and any(
                f["fault"] == "preempt rank"
                and f["from"] - INTERVAL_S <= b
                and a <= f["to"] + INTERVAL_S
                for f in faults
            ):
                continue  # no process to export: the rank was preempted
            inside = any(x - INTERVAL_S <= b and a <= y + INTERVAL_S for x, y in collector)
            if inside:
                worst_gap_inside = max(worst_gap_inside, gap)
            else:
                worst_gap_outside = max(worst_gap_outside, gap)
            # the live reader collects an interval after its previous export returned: a gap
            # up to LATE intervals is its cadence (sync fills from there on)
            if gap > LATE * INTERVAL_S and a > first_ts:
                unexplained_gaps += 1
                gaps.append(
                    {"rank": r, "from_s": round(a - started, 2), "to_s": round(b - started, 2)}
                )
        record = {
            "traintel_steps_total": float(steps[-1]["step"]),
            "traintel_samples_total": float(summary.get("samples") or 0),
            "traintel_tokens_total": float(summary.get("tokens") or 0),
        }
        per_rank[str(r)] = {
            "steps": summary["steps"],
            "segments": len(summary["segments"]),
            "record": record,
            "prometheus": final,
            "equal": all(final[k] == record[k] for k in record),
        }
    fired = {
        one["metric"]["alertname"]
        for one in _query(stack, f'max_over_time(ALERTS{{alertstate="firing"}}{window})')
    }
    pending = {
        one["metric"]["alertname"]
        for one in _query(stack, f'max_over_time(ALERTS{{alertstate="pending"}}{window})')
    }
    growth = {}
    for path in sorted(memory.iterdir()):
        samples = [json.loads(line) for line in path.read_text().splitlines() if line]
        if len(samples) >= 2:
            growth[" ".join(path.name.split("-")[:2]) + f" ({samples[-1]['n']} steps)"] = round(
                (samples[-1]["rss"] - samples[0]["rss"]) / 2**20, 1
            )
    checks = {
        "sync succeeded": sync_rc == 0,
        "final values equal": all(r["equal"] for r in per_rank.values()),
        "no counter decreases": not decreases and series_checked > 0,
        "loss equal at its steps": loss_compared > 0 and loss_mismatched == 0,
        "gaps only inside outages, filled by sync": unexplained_gaps == 0,
        "alerts that must fire fired": set(MUST_FIRE) <= fired,
        "alerts that must not fire did not": not (set(MUST_NOT_FIRE) & fired),
    }
    return {
        "minutes": round(trained / 60, 1),
        "ranks": ranks,
        "pace_steps_per_s": 1 / PACE_S,
        "export_interval_s": INTERVAL_S,
        "faults": [
            {
                "fault": f["fault"],
                "at_s": round(f["from"] - started),
                "down_s": round(f["to"] - f["from"], 1),
            }
            for f in faults
        ],
        "collector_down_s": round(sum(b - a for a, b in collector), 1),
        "ranks_detail": per_rank,
        "counter_series_checked": series_checked,
        "counter_decreases": decreases,
        "loss_samples_compared": loss_compared,
        "loss_samples_mismatched": loss_mismatched,
        "worst_gap_outside_collector_outages_s": round(worst_gap_outside, 2),
        "worst_gap_inside_collector_outages_s": round(worst_gap_inside, 2),
        "gap_allowed_s": LATE * INTERVAL_S,
        "unexplained_gaps": unexplained_gaps,
        "gaps": gaps[:20],
        "alerts_fired": sorted(fired),
        "alerts_pending_only": sorted(pending - fired),
        "step_time_quiet": _percentiles(quiet_steps),
        "step_time_during_faults": _percentiles(fault_steps),
        "memory_growth_mb": growth,
        "checks": checks,
    }


if __name__ == "__main__":
    sys.exit(main())
