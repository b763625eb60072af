"""`traintel grafana push` and the Grafana annotation sink, against a stand-in for Grafana's HTTP
API (tests/grafana_standin.py: no Grafana can run here) that checks every request."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from grafana_standin import GrafanaStandIn
from traintel.cli import main
from traintel.export import grafana
from traintel.stack import project

TOKEN = "glsa_standin_token_0123456789"


@pytest.fixture
def standin():
    found = GrafanaStandIn(TOKEN)
    yield found
    found.close()
    assert found.violations == []


def _push(standin: GrafanaStandIn, token: str = TOKEN, *options: str):
    return CliRunner().invoke(
        main,
        ["grafana", "push", "--url", standin.url, *options],
        env={"GRAFANA_TOKEN": token, "GRAFANA_URL": ""},
    )


def test_push_imports_dashboards_and_data_sources_and_a_second_push_changes_nothing(standin):
    first = _push(standin, TOKEN, "--prometheus-url", "http://prom.example:9090")
    assert first.exit_code == 0, first.output
    boards = grafana.load_dashboards(project.root() / "grafana/dashboards")
    assert set(standin.dashboards) == {b["uid"] for b in boards.values()}
    for stored in standin.dashboards.values():
        assert stored["meta"]["folderUid"] == "traintel"
        mine = next(b for b in boards.values() if b["uid"] == stored["dashboard"]["uid"])
        assert {k: v for k, v in stored["dashboard"].items() if k not in ("id", "version")} == {
            k: v for k, v in mine.items() if k not in ("id", "version")
        }
    assert set(standin.datasources) == {"prometheus", "loki", "tempo"}
    assert standin.datasources["prometheus"]["url"] == "http://prom.example:9090"
    assert standin.datasources["prometheus"]["name"] == "traintel Prometheus"
    derived = standin.datasources["loki"]["jsonData"]["derivedFields"][0]["url"]
    assert derived == "${__value.raw}"  # provisioning's $$ is a literal $
    assert "8 created, 0 updated" in first.output  # folder, 3 data sources, 4 dashboards
    writes = standin.writes()

    second = _push(standin, TOKEN, "--prometheus-url", "http://prom.example:9090")
    assert second.exit_code == 0, second.output
    assert standin.writes() == writes  # only reads the second time
    assert "0 created, 0 updated, 8 unchanged" in second.output

    third = _push(standin, TOKEN, "--prometheus-url", "http://prom2.example:9090")
    assert third.exit_code == 0, third.output
    assert standin.writes()[len(writes) :] == [("PUT", "/api/datasources/uid/prometheus")]
    assert TOKEN not in first.output + second.output + third.output


def test_a_bad_token_is_a_clear_error(standin):
    result = _push(standin, "glsa_wrong")
    assert result.exit_code == 1
    assert "refused the token (401 Unauthorized): set GRAFANA_TOKEN" in result.output
    assert "Traceback" not in result.output and "glsa_wrong" not in result.output
    assert standin.dashboards == {} and standin.datasources == {}


def test_no_token_and_no_token_flag(standin):
    missing = _push(standin, "")
    assert missing.exit_code == 1 and "set GRAFANA_TOKEN" in missing.output
    flag = CliRunner().invoke(main, ["grafana", "push", "--url", standin.url, "--token", TOKEN])
    assert flag.exit_code == 2 and "No such option '--token'" in flag.output


def test_an_unreachable_grafana_is_a_clear_error():
    result = CliRunner().invoke(
        main, ["grafana", "push", "--url", "http://127.0.0.1:9"], env={"GRAFANA_TOKEN": TOKEN}
    )
    assert result.exit_code == 1
    assert "cannot reach Grafana at http://127.0.0.1:9" in result.output


def test_grafana_push_without_grafana_client_names_the_extra():
    code = (
        "import sys; sys.modules['grafana_client'] = None\n"
        "from traintel.cli import main\n"
        "main(['grafana', 'push', '--url', 'http://127.0.0.1:9'], prog_name='traintel')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GRAFANA_TOKEN": TOKEN},
    )
    assert done.returncode == 1
    assert "pip install 'traintel[grafana]'" in done.stderr and "Traceback" not in done.stderr


def test_run_events_become_annotations_off_the_training_thread(standin, quiet_run, monkeypatch):
    monkeypatch.setenv("GRAFANA_URL", standin.url)
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    standin.annotations_open.clear()  # a Grafana that does not answer yet
    with quiet_run(grafana_annotations=True, shutdown_timeout=5) as run:
        for _ in run.track(range(3)):
            run.log(loss=1.0)
        run.log_eval(val_loss=0.5)
        run.log_eval(val_loss=0.7)  # not a best: no annotation
        run.event("checkpoint", path="ckpt/best.pt")
        run.error(ValueError("corrupt sample"), operation="data_loading")
        assert standin.annotations == []  # the loop went on while Grafana kept it waiting
        standin.annotations_open.set()
    kinds = [a["tags"][-1] for a in standin.annotations]
    assert kinds == ["start", "best_eval", "checkpoint", "error", "end"]
    for annotation in standin.annotations:
        assert annotation["tags"][:3] == ["traintel", "project:test", f"run:{run.id}"]
        assert isinstance(annotation["time"], int) and annotation["time"] > 1_700_000_000_000
    texts = {a["tags"][-1]: a["text"] for a in standin.annotations}
    assert texts["best_eval"] == "best val_loss=0.5"
    assert texts["checkpoint"] == "checkpoint ckpt/best.pt"
    assert texts["end"] == "run finished after 3 steps"
    assert "corrupt sample" in texts["error"]


def test_a_failed_run_is_a_failure_annotation(standin, quiet_run, monkeypatch):
    monkeypatch.setenv("GRAFANA_URL", standin.url)
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    with pytest.raises(RuntimeError):
        with quiet_run(grafana_annotations=True):
            raise RuntimeError("boom")
    assert [a["tags"][-1] for a in standin.annotations][-1] == "failure"


def test_annotations_without_grafana_settings_are_one_warning(quiet_run, recorded, monkeypatch):
    monkeypatch.delenv("GRAFANA_URL", raising=False)
    with quiet_run(grafana_annotations=True) as run:
        run.log(loss=1.0)
    warnings = [
        line
        for line in recorded(run.dir)
        if line["level"] == "warning"
        and "Grafana annotations are off: set GRAFANA_URL" in str(line.get("message"))
    ]
    assert len(warnings) == 1, recorded(run.dir)
    assert run.outlets.annotations is None


def test_the_dashboards_show_grafanas_traintel_annotations():
    boards = grafana.load_dashboards(project.root() / "grafana/dashboards")
    for board in boards.values():
        layers = [
            a
            for a in board["annotations"]["list"]
            if a.get("datasource", {}).get("type") == "grafana"
        ]
        assert layers, board["title"]
        assert json.dumps(layers[0]["target"]) == json.dumps(
            {"limit": 100, "matchAny": False, "tags": ["traintel"], "type": "tags"}
        )
