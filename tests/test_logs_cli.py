"""``traintel logs`` on run records written in the documented format (tests/records_factory.py):
rotated files, a torn last line, several ranks, a live run being written and rotated."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from records_factory import T0, RecordWriter, write_run
from stack_fixture import eventually
from traintel.cli.logs import logs
from traintel.record.reader import Records
from traintel.reports import analysis, render

TRAINTEL = str(Path(sys.executable).with_name("traintel"))  # the installed entry point


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """run-a: rotated every 7 steps, torn last line; run-b: another lr, no error; multi: 2 ranks."""
    write_run(tmp_path / "run-a", rotate_every=7, truncated=True)
    write_run(tmp_path / "run-b", run="run-b", lr=0.01, error=False)
    for rank in (0, 1):
        write_run(tmp_path / "multi" / f"rank-{rank}", run="multi", rank=rank, world_size=2)
    return tmp_path


def invoke(*args, **kwargs):
    return CliRunner().invoke(logs, [str(a) for a in args], **kwargs)


def as_json(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def step_lines(run: Path) -> list[dict]:
    files = sorted(run.glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    files.append(run / "events.jsonl")
    lines = [
        json.loads(line) for f in files for line in f.read_text().splitlines() if line.endswith("}")
    ]
    return [r for r in lines if r["type"] == "step"]


# --- reading ---------------------------------------------------------------------------------


def test_rotated_files_are_read_oldest_first_and_a_torn_line_is_counted(runs):
    assert sorted(p.name for p in (runs / "run-a").iterdir()) == [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.2",
    ]
    records = Records(runs / "run-a")
    steps = [r["step"] for r in records if r["type"] == "step"]
    assert steps == list(range(1, 21))
    assert records.bad == 1


def test_ranks_are_merged_in_time_order(runs):
    records = list(Records(runs / "multi"))
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    assert {r["rank"] for r in records} == {0, 1}


# --- summary ---------------------------------------------------------------------------------


def test_summary_json(runs):
    s = as_json(invoke("summary", runs / "run-a", "--format", "json"))
    assert s["events"] == 31 and s["skipped_lines"] == 1
    assert s["by_type"]["step"] == 20 and s["by_type"]["instrument"] == 2
    assert s["by_level"] == {"info": 29, "warning": 1, "error": 1}
    assert (s["errors"], s["warnings"], s["errors_by_type"]) == (1, 1, {"oom": 1})
    assert (s["steps"], s["epochs"], s["status"], s["ranks"]) == (20, 1, "finished", [0])
    assert (s["loss"]["final"], s["loss"]["best"], s["loss"]["nonfinite"]) == (
        pytest.approx(1.0),
        pytest.approx(1.0),
        0,
    )
    steps = step_lines(runs / "run-a")
    elapsed = steps[-1]["ts"] - steps[0]["ts"] + steps[0]["step_s"]
    assert s["throughput"]["steps_per_s"] == pytest.approx(20 / elapsed)
    assert s["throughput"]["samples_per_s"] == pytest.approx(20 * 32 / elapsed)
    assert s["duration_s"] == pytest.approx(s["end_ts"] - T0)
    assert (s["eval"]["val_loss"]["last"], s["eval"]["val_loss"]["best"]) == (
        pytest.approx(0.5),
        pytest.approx(0.5),
    )


def test_summary_text_reports_skipped_lines_without_a_traceback(runs):
    result = invoke("summary", runs / "run-a")
    assert result.exit_code == 0
    assert "Traceback" not in result.output
    for text in ("run-a", "finished", "step 20", "oom 1", "final 1, best 1"):
        assert text in result.stdout
    assert "skipped 1 line(s) (1 not JSON)" in result.stderr


def test_a_run_is_found_by_id_or_events_file(runs):
    by_id = as_json(invoke("summary", "run-a", "--format", "json", env={"TRAINTEL_DIR": str(runs)}))
    by_file = as_json(invoke("summary", runs / "run-a" / "events.jsonl", "--format", "json"))
    assert by_id["events"] == by_file["events"] == 31
    both = as_json(invoke("summary", runs / "run-a", runs / "run-b", "--format", "json"))
    assert [s["run"] for s in both] == ["run-a", "run-b"]


def test_summary_of_a_multi_rank_run(runs):
    s = as_json(invoke("summary", runs / "multi", "--format", "json"))
    assert (s["ranks"], s["events"], s["steps"], s["errors"]) == ([0, 1], 62, 20, 2)


def test_a_missing_run_is_a_clean_error(runs, monkeypatch):
    monkeypatch.chdir(runs)
    result = invoke("summary", "no-such-run")
    assert result.exit_code == 1
    assert "no run record" in result.output and "Traceback" not in result.output


# --- errors, grep, metrics ---------------------------------------------------------------------


def test_errors_grouped_and_verbose(runs):
    result = invoke("errors", runs / "run-a")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Run ") and "1 error(s), 1 warning(s)" in lines[0]
    assert lines[3].split()[:4] == ["error", "error", "oom", "1"]
    assert lines[4].split()[:4] == ["warning", "log", "train", "1"]
    assert "Traceback" not in result.stdout
    verbose = invoke("errors", runs / "run-a", "--verbose").stdout
    assert "Traceback (most recent call last)" in verbose
    assert "hint: Reduce the batch size." in verbose
    data = as_json(invoke("errors", runs / "run-a", "--format", "json"))
    assert [r["type"] for r in data["records"]] == ["log", "error"]
    assert data["skipped_lines"] == 1


def test_grep_filters(runs):
    run = runs / "run-a"
    spike = invoke("grep", "spike", run)
    assert spike.exit_code == 0 and len(spike.stdout.splitlines()) == 1
    steps = invoke("grep", r"metrics\.loss=1\.5\b", run, "--event", "step", "--format", "json")
    assert [json.loads(line)["step"] for line in steps.stdout.splitlines()] == [10]
    assert invoke("grep", "checkpoint", run, "--event", "checkpoint").stdout.count("\n") == 1
    errors = invoke("grep", ".", run, "--level", "error", "--format", "json").stdout.splitlines()
    assert [json.loads(line)["type"] for line in errors] == ["error"]
    steps = step_lines(run)
    since, until = (render.iso(steps[i]["ts"]).replace(" ", "T") for i in (1, 3))
    window = invoke(
        "grep", ".", run, "--event", "step", "--since", since, "--until", until, "--format", "json"
    )
    assert [json.loads(line)["step"] for line in window.stdout.splitlines()] == [2, 3, 4]
    assert invoke("grep", ".", run, "--since", "10m").exit_code == 1  # the run is from 2023
    assert invoke("grep", "no such text", run).exit_code == 1
    assert invoke("grep", "(", run).exit_code == 2
    assert invoke("grep", ".", run, "--since", "yesterday").exit_code == 2


def test_metrics(runs):
    found = as_json(invoke("metrics", runs / "run-a", "--filter", "timers", "--format", "json"))
    assert [(i["name"], i["kind"], i["count"], i["p95"]) for i in found] == [
        ("data_load", "timer", 20, 0.18)
    ]
    table = invoke("metrics", runs / "run-a").stdout.splitlines()
    assert table[0].split() == [
        "name",
        "kind",
        "count",
        "total",
        "mean",
        "p50",
        "p95",
        "p99",
        "min",
        "max",
    ]
    assert [line.split()[0] for line in table[1:]] == ["batches", "data_load"]


# --- compare -----------------------------------------------------------------------------------


def test_compare_shows_only_differing_config(runs, tmp_path):
    rows = as_json(invoke("compare", runs / "run-a", runs / "run-b", "--format", "json"))
    assert [k for k in rows[0] if k.startswith("config.")] == ["config.lr"]
    assert [(r["run"], r["config.lr"], r["errors"]) for r in rows] == [
        ("run-a", 0.001, 1),
        ("run-b", 0.01, 0),
    ]
    assert rows[0]["steps"] == 20 and rows[0]["loss_best"] == pytest.approx(1.0)
    out = tmp_path / "cmp.csv"
    assert invoke("compare", runs, "--format", "csv", "--output", out).exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("run,status,config.lr,steps,duration_s")
    assert [line.split(",")[0] for line in lines[1:]] == ["multi", "run-a", "run-b"]
    table = invoke("compare", runs).stdout.splitlines()
    assert table[0].split()[:3] == ["run", "status", "config.lr"] and len(table) == 4


def _writes_output(command: str) -> bool:
    return any("--output" in getattr(param, "opts", ()) for param in logs.commands[command].params)


@pytest.mark.parametrize("command", [c for c in sorted(logs.commands) if _writes_output(c)])
def test_every_output_option_writes_its_file(runs, tmp_path, command):
    """Each subcommand with --output, in its default format (the plain table of `compare` once
    raised NameError here): the file holds what standard output would, and stdout stays empty."""
    out = tmp_path / f"{command}.out"
    targets = [runs / "run-a", runs / "run-b"] if command == "compare" else [runs / "run-a"]
    result = invoke(command, *targets, "--output", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"wrote {out}" in result.stderr
    expected = invoke(command, *targets).stdout
    assert out.read_text() == expected and expected.strip()


# --- tail, monitor ------------------------------------------------------------------------------


def test_tail_shows_the_last_records(runs):
    lines = invoke("tail", runs / "run-a", "-n", 3, "--format", "json").stdout.splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["instrument", "instrument", "run_end"]
    lines = invoke("tail", runs / "multi", "-n", 2, "--format", "json").stdout.splitlines()
    assert [(json.loads(line)["type"], json.loads(line)["rank"]) for line in lines] == [
        ("run_end", 0),
        ("run_end", 1),
    ]


def write_live(directory: Path, delay: float, error_at: int | None = None) -> threading.Thread:
    """A thread writing 30 steps from ``delay`` seconds on, rotating every 10, then run_end."""
    writer = RecordWriter(directory, run="live")
    writer.write("run_start", project="p", name="live", host="h", world_size=1)

    def body():
        time.sleep(delay)
        for step in range(1, 31):
            writer.write("step", step=step, epoch=0, step_s=0.01, metrics={"loss": 1 / step})
            if step == error_at:
                writer.write("error", level="error", error_type="nonfinite_loss", message="nan")
            if step % 10 == 0:
                writer.rotate()
            time.sleep(0.01)
        writer.write("run_end", status="finished", duration_s=1.0, steps=30)
        writer.close()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(60)
def test_tail_follow_waits_for_the_run_and_survives_rotation(tmp_path):
    """A real ``traintel`` process, started before the run exists, follows it through three
    rotations."""
    run, out, err = tmp_path / "live", tmp_path / "tail.out", tmp_path / "tail.err"
    with open(out, "wb") as sink, open(err, "wb") as notes:
        proc = subprocess.Popen(
            [TRAINTEL, "logs", "tail", "-f", "--format", "json", str(run)],
            stdout=sink,
            stderr=notes,
        )
        try:
            eventually(lambda: b"waiting for" in err.read_bytes(), 30, 0.05, "'waiting for'")
            writer = write_live(run, delay=0.2)
            eventually(lambda: b"run_end" in out.read_bytes(), 30, 0.05, "the run_end line")
            writer.join()
        finally:
            proc.terminate()
            proc.wait(10)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in records[:1] + records[-1:]] == ["run_start", "run_end"]
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(1, 31))
    assert sorted(p.name for p in run.iterdir())[-1] == "events.jsonl.3"


@pytest.mark.timeout(60)
def test_monitor_exits_non_zero_on_alert(tmp_path):
    run = tmp_path / "live"
    writer = write_live(run, delay=0.2, error_at=15)
    result = invoke("monitor", run, "--alert-on", "error", "--exit-on-alert")
    writer.join()
    assert result.exit_code == 1
    assert result.stdout.startswith("ALERT ") and "nonfinite_loss" in result.stdout
    assert len(result.stdout.splitlines()) == 1


def test_monitor_ends_with_the_run(runs):
    quiet = invoke("monitor", runs / "run-b", "--alert-on", "critical", "--exit-on-alert")
    assert (quiet.exit_code, quiet.stdout) == (0, "")
    rule = r"metrics\.loss=1\.0\b"
    loud = invoke("monitor", runs / "multi", "--alert-on", rule, "--format", "json")
    assert loud.exit_code == 0
    alerts = [json.loads(line) for line in loud.stdout.splitlines()]
    assert [(a["alert"], a["record"]["rank"], a["record"]["step"]) for a in alerts] == [
        (rule, 0, 20),
        (rule, 1, 20),
    ]


# --- report -------------------------------------------------------------------------------------


def test_report_markdown_and_plots(runs, tmp_path):
    out = tmp_path / "out" / "report.md"
    out.parent.mkdir()
    result = invoke("report", runs / "run-a", "--output", out, "--plot")
    assert result.exit_code == 0, result.output
    text = out.read_text()
    for heading in (
        "# Run report: tiny",
        "## Overview",
        "## Errors and warnings",
        "## Performance",
        "### Instruments",
        "![loss](report-loss.png)",
        "![memory](report-memory.png)",
    ):
        assert heading in text
    assert "| unreadable lines skipped | 1 |" in text and "CUDA out of memory" in text
    from matplotlib.image import imread

    for name in ("loss", "throughput", "memory"):
        pixels = imread(out.parent / f"report-{name}.png")
        assert pixels.shape[:2] == (400, 800)
        assert pixels[..., :3].std() > 0.05  # not blank


def test_plot_figures_have_the_right_axes(runs):
    series = analysis.Series()
    analysis.scan(Records(runs / "multi"), series)
    figs = render.figures(series)
    axes = {name: fig.axes[0] for name, fig in figs.items()}
    assert {n: (a.get_xlabel(), a.get_ylabel()) for n, a in axes.items()} == {
        "loss": ("step", "loss"),
        "eval": ("step", "value"),
        "throughput": ("step", "samples/s"),
        "memory": ("step", "memory"),
    }
    (loss,) = axes["loss"].get_lines()
    assert list(loss.get_xdata()) == list(range(1, 21))  # rank 0 only
    assert loss.get_ydata()[-1] == pytest.approx(1.0)
    assert axes["throughput"].get_lines()[0].get_ydata()[0] == pytest.approx(32 / 0.5)
    assert [t.get_text() for t in axes["memory"].get_legend().get_texts()] == ["gpu_mem_gb"]


def test_the_cli_stays_light(runs):
    """A real invocation that must not pay for OpenTelemetry, torch or matplotlib."""
    code = (
        "import sys; from traintel.cli import main\n"
        "try: main(['logs', 'summary', sys.argv[1], '--format', 'json'])\n"
        "except SystemExit: pass\n"
        "heavy = {m.split('.')[0] for m in sys.modules}\n"
        "heavy &= {'opentelemetry', 'torch', 'matplotlib'}\n"
        "print(sorted(heavy), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(runs / "run-b")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 20
    assert done.stderr.strip() == "[]"


# --- real runs: records written by traintel.init in short training loops ----------------------

QUIET = {
    "otlp": False,
    "sample_interval": 0,
    "progress": "off",
    "console_logs": False,
    "handle_signals": False,
    "flush_interval": 0.02,
}


def train(
    directory: str,
    run_id: str,
    lr: float = 0.1,
    steps: int = 20,
    rank: int = 0,
    world_size: int = 1,
    step_sleep: float = 0.005,
    max_record_bytes: int = 4096,
    fail: bool = True,
) -> None:
    """A short real training loop: two epochs, a timer, evals, a checkpoint, optionally an OOM.

    Small ``max_record_bytes`` and a pause per step make the writer flush and rotate for real.
    """
    import traintel

    with traintel.init(
        project="real",
        name=f"lr{lr}",
        config={"lr": lr, "batch_size": 8},
        dir=directory,
        run_id=run_id,
        rank=rank,
        world_size=world_size,
        total_epochs=2,
        max_record_bytes=max_record_bytes,
        **QUIET,
    ) as run:
        load = run.timer("data_load")
        for epoch in run.epochs():
            for i in run.track(range(steps // 2)):
                with load:
                    time.sleep(step_sleep)
                step = epoch * (steps // 2) + i + 1
                run.log(loss=lr * 10 / step, lr=lr, samples=8, gpu_mem_gb=1 + step / 100)
            run.log_eval(val_loss=1.0 - epoch / 10)
        run.event("checkpoint", path=f"/ckpt/{run_id}.pt")
        if fail:
            try:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            except RuntimeError as exc:
                run.error(exc)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """Real records: ``a`` (rotated, an OOM), ``b`` (another lr, clean), ``multi`` (two ranks)."""
    root = tmp_path_factory.mktemp("real")
    train(str(root), "a")
    train(str(root), "b", lr=0.01, fail=False)
    for rank in (0, 1):
        train(str(root), "multi", rank=rank, world_size=2, step_sleep=0, fail=False)
    return root


def test_real_summary_agrees_with_the_core(real):
    assert len(list((real / "a").glob("events.jsonl.*"))) >= 2  # rotated for real
    for run in ("a", "b", "multi/rank-0"):
        ours = as_json(invoke("summary", real / run, "--format", "json"))
        core = json.loads((real / run / "summary.json").read_text())
        assert (ours["status"], ours["steps"], ours["epochs"], ours["samples"]) == (
            core["status"],
            core["steps"],
            core["epochs"],
            core["samples"],
        )
        assert ours["loss"]["final"] == pytest.approx(core["loss"]["final"])
        assert ours["loss"]["best"] == pytest.approx(core["loss"]["best"])
        assert ours["throughput"]["steps_per_s"] == pytest.approx(core["throughput"]["steps_per_s"])
        assert ours["errors_by_type"] == core["errors"]["by_type"]
        assert ours["duration_s"] == pytest.approx(core["duration_s"], abs=0.05)
        assert ours["eval"]["val_loss"]["best"] == pytest.approx(0.9)
        assert ours["skipped_lines"] == 0
    multi = as_json(invoke("summary", real / "multi", "--format", "json"))
    assert (multi["ranks"], multi["steps"], multi["by_type"]["step"]) == ([0, 1], 20, 40)


def test_real_errors_grep_metrics_tail(real):
    errors = as_json(invoke("errors", real / "a", "--format", "json"))
    assert [(g["type"], g["kind"], g["count"]) for g in errors["groups"]] == [("error", "oom", 1)]
    assert "Traceback" in invoke("errors", real / "a", "--verbose").stdout
    assert invoke("errors", real / "b").stdout.splitlines()[1] == "No errors or warnings."
    found = invoke("grep", "ckpt/a", real / "a", "--event", "checkpoint", "--format", "json")
    assert [json.loads(line)["event"] for line in found.stdout.splitlines()] == ["checkpoint"]
    assert invoke("grep", ".", real / "b", "--level", "error").exit_code == 1
    timers = as_json(invoke("metrics", real / "a", "--filter", "timers", "--format", "json"))
    assert [(t["name"], t["kind"], t["count"]) for t in timers] == [("data_load", "timer", 20)]
    last = invoke("tail", real / "a", "-n", 1, "--format", "json").stdout
    assert json.loads(last)["type"] == "run_end"


def test_real_compare_and_report(real, tmp_path):
    rows = as_json(invoke("compare", real / "a", real / "b", "--format", "json"))
    assert [k for k in rows[0] if k.startswith("config.")] == ["config.lr"]
    assert [(r["run"], r["errors"], r["steps"]) for r in rows] == [("a", 1, 20), ("b", 0, 20)]
    assert len(invoke("compare", real).stdout.splitlines()) == 4  # a, b, multi and the header
    out = tmp_path / "report.md"
    assert invoke("report", real / "a", "--output", out, "--plot").exit_code == 0
    text = out.read_text()
    assert "## Errors and warnings" in text and "CUDA out of memory" in text
    for name in ("loss", "throughput", "memory"):
        assert f"![{name}](report-{name}.png)" in text
        assert (tmp_path / f"report-{name}.png").stat().st_size > 1000


def test_real_monitor_alerts_on_a_finished_run(real):
    result = invoke("monitor", real / "a", "--alert-on", "error", "--exit-on-alert")
    assert result.exit_code == 1 and "CUDA out of memory" in result.stdout
    assert invoke("monitor", real / "b", "--alert-on", "error", "--exit-on-alert").exit_code == 0


@pytest.mark.timeout(120)
def test_real_live_run_followed_through_rotation(tmp_path):
    """A training process writes and rotates while ``tail -f`` (another process) and
    ``monitor`` follow it; monitor starts before the run has made its directory."""
    run, out = tmp_path / "live", tmp_path / "tail.out"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"from test_logs_cli import train; train({str(tmp_path)!r}, 'live', steps=60, "
        f"step_sleep=0.02, max_record_bytes=2048)"
    )
    with open(out, "wb") as sink:
        tail = subprocess.Popen(
            [TRAINTEL, "logs", "tail", "-f", "-n", "1000", "--format", "json", str(run)],
            stdout=sink,
        )
        trainer = subprocess.Popen([sys.executable, "-c", code])
        try:
            monitor = invoke("monitor", run, "--alert-on", "oom", "--exit-on-alert")
            assert trainer.wait(60) == 0
            eventually(lambda: b"run_end" in out.read_bytes(), 30, 0.05, "the run_end line")
        finally:
            trainer.kill()
            tail.terminate()
            tail.wait(10)
    assert monitor.exit_code == 1 and "CUDA out of memory" in monitor.stdout
    assert "waiting for" in monitor.stderr
    assert len(list(run.glob("events.jsonl.*"))) >= 3
    records = [json.loads(line) for line in out.read_text().splitlines()]
    steps = [r["step"] for r in records if r["type"] == "step"]
    assert steps == list(range(1, 61))
