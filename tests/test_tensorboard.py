"""``traintel tensorboard``: event files from run records, served by the real TensorBoard
(``--serve``) and checked through its HTTP data API and in a real Chromium (``tests/browser.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from browser import browser, page, shots_dir  # noqa: F401  (fixtures)
from conftest import read_lines
from stack_fixture import eventually

pytest.importorskip("tensorboard", reason="pip install 'traintel[tensorboard]'")

from traintel.cli import main  # noqa: E402
from traintel.export.tensorboard import hparams  # noqa: E402
from traintel.stack.native import free_port

CONFIG = {
    "lr": 0.05,
    "optimizer": {"name": "adamw", "betas": [0.9, 0.99]},
    "amp": True,
    "batch_size": 64,
}


def _run(quiet_run: Any, name: str, steps: int, lr: float) -> Path:
    with quiet_run(name=name, config={**CONFIG, "lr": lr}, total_steps=steps) as run:
        for i in run.track(range(steps)):
            run.log(loss=1.0 / (1 + i) + lr, lr=lr)
            if (i + 1) % 50 == 0:
                run.log_eval(val_loss=2.0 / (1 + i) + lr)
        run.log_values(train_acc=0.9)
        run.event("checkpoint_saved", path="last.pt")
    return Path(run.dir)


def _get(url: str, data: bytes | None = None) -> Any:
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"} if data else {}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_serves_every_step_and_the_hparams_table(quiet_run, tmp_path, page):
    """Two runs (one past TensorBoard's default of 1,000 points per tag), written and served
    by the command a user runs; TensorBoard's own API and its page show them."""
    long = _run(quiet_run, "long", 1500, 0.05)
    short = _run(quiet_run, "short", 120, 0.01)
    logdir, port = tmp_path / "tb", free_port()
    env = {**os.environ, "TRAINTEL_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "traintel",
            "tensorboard",
            str(long),
            str(short),
            "--logdir",
            str(logdir),
            "--serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        runs: list[str] = []
        while time.monotonic() < deadline and len(runs) < 2:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                runs = [r for r in _get(f"{base}/data/runs")]
            except OSError:
                pass
            time.sleep(0.5)
        assert len(runs) == 2, runs
        for run_dir, run_name in (
            (long, next(r for r in runs if "/long-" in r)),
            (short, next(r for r in runs if "/short-" in r)),
        ):
            steps = read_lines(run_dir).of("step")
            query = urllib.parse.urlencode({"run": run_name, "tag": "loss"})

            def loaded(query: str = query, count: int = len(steps)) -> Any:
                """TensorBoard loads event files in the background: every point, or None."""
                got = _get(f"{base}/data/plugin/scalars/scalars?{query}")
                return got if len(got) >= count else None

            points = eventually(loaded, 30, 0.5, f"{len(steps)} points of {run_name}")
            assert [p[1] for p in points] == [s["step"] for s in steps]
            assert [p[2] for p in points] == pytest.approx([s["metrics"]["loss"] for s in steps])
            assert points[-1][0] == pytest.approx(steps[-1]["ts"])
            tags = _get(f"{base}/data/plugin/scalars/tags")[run_name]
            assert {
                "loss",
                "lr",
                "eval/val_loss",
                "best/eval/val_loss",
                "train_acc",
                "traintel/step_s",
                "traintel/data_wait_s",
            } <= set(tags)

        experiment = _get(
            f"{base}/data/plugin/hparams/experiment", json.dumps({"experimentName": ""}).encode()
        )
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert set(hparams(CONFIG)) <= names
        assert {"lr", "optimizer.name", "amp", "batch_size"} <= names
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"loss", "best/eval/val_loss"} <= metrics
        groups = _get(
            f"{base}/data/plugin/hparams/session_groups",
            json.dumps(
                {
                    "experimentName": "",
                    "startIndex": 0,
                    "sliceSize": 100,
                    "colParams": [],
                    "allowedStatuses": [
                        "STATUS_UNKNOWN",
                        "STATUS_SUCCESS",
                        "STATUS_FAILURE",
                        "STATUS_RUNNING",
                    ],
                    "aggregationType": "AGGREGATION_AVG",
                }
            ).encode(),
        )
        by_run = {g["name"]: g for g in groups["sessionGroups"]}
        long_name = next(r for r in runs if "/long-" in r)
        assert by_run[long_name]["hparams"]["lr"] == 0.05
        assert by_run[long_name]["hparams"]["optimizer.name"] == "adamw"
        final = {m["name"]["tag"]: m["value"] for m in by_run[long_name]["metricValues"]}
        assert final["loss"] == pytest.approx(read_lines(long).of("step")[-1]["metrics"]["loss"])

        # in the browser: the HParams table lists the config, the loss card every step
        page.goto(f"{base}/#hparams")
        for shown in ("optimizer.name", "batch_size", "amp", "adamw"):  # in its shadow DOM
            page.locator(f"text={shown}").first.wait_for(timeout=60_000)
        page.locator(f"text={long_name}").first.wait_for(timeout=60_000)  # its row
        page.screenshot(path=str(shots_dir() / "tensorboard-hparams.png"), full_page=True)
        page.goto(f"{base}/#timeseries")
        page.wait_for_selector("text=eval/val_loss", timeout=60_000)
        run_name = next(r for r in runs if "/long-" in r)
        fetched = page.evaluate(
            "async (q) => (await (await fetch('/data/plugin/scalars/scalars?' + q)).json()).length",
            urllib.parse.urlencode({"run": run_name, "tag": "loss"}),
        )
        assert fetched == 1500
        page.screenshot(path=str(shots_dir() / "tensorboard-scalars.png"), full_page=True)
        print(f"screenshots: {shots_dir()}")
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_writing_again_replaces_the_event_files(quiet_run, tmp_path):
    run_dir = _run(quiet_run, "again", 30, 0.1)
    logdir = tmp_path / "tb"
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(main, ["tensorboard", str(run_dir), "--logdir", str(logdir)])
        assert result.exit_code == 0, result.output
        assert "30 steps" in result.output
    files = list(logdir.rglob("events.out.tfevents.*"))
    assert len(files) == 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    steps = read_lines(run_dir).of("step")
    assert [e.step for e in acc.Scalars("loss")] == [s["step"] for s in steps]
    texts = [t.tensor_proto.string_val[0].decode() for t in acc.Tensors("events")]
    assert any("checkpoint_saved" in t for t in texts)


def test_a_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    from traintel.core import extras

    monkeypatch.setattr(extras, "missing", lambda extra, module=None: "tensorboard")
    result = CliRunner().invoke(main, ["tensorboard", str(tmp_path)])
    assert result.exit_code != 0
    assert "pip install 'traintel[tensorboard]'" in result.output


def test_hparams_flatten_the_config():
    assert hparams({"a": {"b": 1, "c": "x"}, "d": True, "e": [1, 2], "f": None}) == {
        "a.b": 1.0,
        "a.c": "x",
        "d": True,
        "e": "[1, 2]",
    }
    assert hparams({}) == {}


def _scalars(logdir: Path, tag: str) -> list[Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return list(acc.Scalars(tag)) if tag in acc.Tags()["scalars"] else []


def test_a_live_run_writes_its_event_files_as_it_goes(quiet_run):
    """``traintel.init(tensorboard=True)``: the steps reach ``<run dir>/tensorboard/`` while the
    run goes on, every one of them, and the session ends with the run's status."""
    run = quiet_run(name="live-tb", tensorboard=True, config=CONFIG)
    logdir = Path(run.dir) / "tensorboard"
    try:
        for i in run.track(range(50)):
            run.log(loss=1.0 / (1 + i))
        run.flush()
        deadline = time.monotonic() + 30
        # the writer thread makes the directory with its first event file
        while (not logdir.is_dir() or len(_scalars(logdir, "loss")) < 50) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert len(_scalars(logdir, "loss")) == 50  # before the run ends
        for i in run.track(range(50, 80)):
            run.log(loss=1.0 / (1 + i))
        run.log_eval(val_loss=0.5)
    finally:
        run.finish()
    steps = read_lines(run.dir).of("step")
    assert [e.step for e in _scalars(logdir, "loss")] == [s["step"] for s in steps]
    assert [e.value for e in _scalars(logdir, "loss")] == pytest.approx(
        [s["metrics"]["loss"] for s in steps]
    )
    assert [e.value for e in _scalars(logdir, "best/eval/val_loss")] == [0.5]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    contents = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(contents[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["optimizer.name"].string_value == "adamw"
    end = metadata.parse_session_end_info_plugin_data(contents[metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS


def test_a_live_run_without_tensorboard_warns_once_and_goes_on(quiet_run, monkeypatch):
    from traintel.core import extras

    monkeypatch.setattr(extras, "missing", lambda extra, module=None: "tensorboard")
    with quiet_run(name="no-tb", tensorboard=True) as run:
        run.log(loss=1.0)
    warnings = [
        line["message"]
        for line in read_lines(run.dir).of("log")
        if line["level"] == "warning" and "tensorboard" in line["message"]
    ]
    assert len(warnings) == 1 and "pip install 'traintel[tensorboard]'" in warnings[0]
    assert not (Path(run.dir) / "tensorboard").exists()
    assert run.summary is not None and run.summary["status"] == "finished"


def test_one_tensorboard_run_per_rank(quiet_run, tmp_path):
    """A job of two ranks: one TensorBoard run per rank, each with that rank's steps."""
    run_id = "20261207-120000-abc123"
    for rank in (0, 1):
        with quiet_run(name="job", run_id=run_id, rank=rank, local_rank=rank, world_size=2) as run:
            for i in run.track(range(10 + rank)):
                run.log(loss=float(rank * 100 + i))
    job = Path(run.dir).parent
    result = CliRunner().invoke(main, ["tensorboard", str(job), "--logdir", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    for rank in (0, 1):
        logdir = tmp_path / "tb" / "test" / f"job-{run_id}" / f"rank-{rank}"
        steps = read_lines(job / f"rank-{rank}").of("step")
        assert len(steps) == 10 + rank
        assert [e.value for e in _scalars(logdir, "loss")] == [s["metrics"]["loss"] for s in steps]
