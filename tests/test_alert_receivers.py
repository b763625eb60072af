"""Alerts that reach someone: `traintel stack init --webhook/--slack-webhook/--email` writes
Alertmanager's receiver with its secrets in .env, `stack up` hands them to the real Alertmanager
as files, a NaN loss fires LossNotFinite in the real Prometheus, and it arrives at the webhook
and in `traintel status`. The webhook is a small HTTP server of the test's: it is the user's
endpoint, which no real program of ours stands for."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from click.testing import CliRunner

from stack_fixture import demo_command, evaluate_every_second, eventually
from traintel.cli import main
from traintel.stack import install
from traintel.stack.native import NativeStack, StackError, free_ports

SECRET = "http://127.0.0.1:{port}/hooks/T0-secret-token"


def _init(directory, *options):
    result = CliRunner().invoke(main, ["stack", "init", str(directory), *options])
    assert result.exit_code == 0, result.output
    return result.output


def test_init_writes_receivers_with_their_secrets_in_env_only(tmp_path):
    slack = "https://hooks.slack.com/services/T000/B000/s3cr3t"
    hook = "https://alerts.example.com/traintel?token=s3cr3t2"
    said = _init(
        tmp_path / "p",
        "--slack-webhook",
        slack,
        "--webhook",
        hook,
        "--email",
        "ml-team@example.com",
        "--smtp-smarthost",
        "smtp.example.com:587",
    )
    project = tmp_path / "p"
    assert "alerts go to Slack, your webhook, e-mail to ml-team@example.com" in said
    config = yaml.safe_load((project / "alertmanager/alertmanager.yml").read_text())
    (team,) = config["receivers"]
    assert team["webhook_configs"][0]["url_file"] == "/run/secrets/alertmanager_webhook_url"
    assert team["slack_configs"][0]["api_url_file"] == (
        "/run/secrets/alertmanager_slack_webhook_url"
    )
    assert team["email_configs"][0]["to"] == "ml-team@example.com"
    assert team["email_configs"][0]["require_tls"] is True
    for path in project.rglob("*"):
        if path.is_file() and path.name != ".env":
            assert "s3cr3t" not in path.read_text(errors="replace"), path
    env = (project / ".env").read_text()
    assert f"ALERTMANAGER_SLACK_WEBHOOK_URL={slack}\n" in env
    assert f"ALERTMANAGER_WEBHOOK_URL={hook}\n" in env
    assert "GRAFANA_ADMIN_PASSWORD=" in env
    assert stat.S_IMODE((project / ".env").stat().st_mode) == 0o600
    override = yaml.safe_load((project / "docker-compose.override.yml").read_text())
    assert override["secrets"]["alertmanager_webhook_url"] == {
        "environment": "ALERTMANAGER_WEBHOOK_URL"
    }
    assert set(override["services"]["alertmanager"]["secrets"]) == {
        "alertmanager_webhook_url",
        "alertmanager_slack_webhook_url",
    }
    if not install.missing_reason("alertmanager"):
        amtool = install.binary("alertmanager").parent / "amtool"
        checked = subprocess.run(
            [str(amtool), "check-config", str(project / "alertmanager/alertmanager.yml")],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_without_receivers_init_says_alerts_reach_no_one(tmp_path):
    said = _init(tmp_path / "p")
    assert "alerts reach no one yet" in said
    assert not (tmp_path / "p" / "docker-compose.override.yml").exists()
    assert (tmp_path / "p" / ".gitignore").read_text().splitlines()[-1] == ".env"


def test_a_missing_secret_is_named_before_alertmanager_starts(tmp_path, monkeypatch):
    _init(tmp_path / "p", "--webhook", "https://alerts.example.com/x")
    env = tmp_path / "p" / ".env"
    env.write_text(
        "".join(
            line + "\n"
            for line in env.read_text().splitlines()
            if not line.startswith("ALERTMANAGER_WEBHOOK_URL=")
        )
    )
    monkeypatch.delenv("ALERTMANAGER_WEBHOOK_URL", raising=False)
    native = NativeStack(tmp_path / "run", ports=free_ports(), configs=tmp_path / "p")
    with pytest.raises(StackError, match="ALERTMANAGER_WEBHOOK_URL"):
        native.render("alertmanager")


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append({"path": self.path, "body": json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.stack
def test_a_nan_loss_reaches_the_webhook_and_traintel_status(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = SECRET.format(port=server.server_address[1])
    project = tmp_path / "project"
    _init(project, "--webhook", url)
    native = NativeStack(tmp_path / "stack", ports=free_ports(), configs=project)
    try:
        native.up(names=("prometheus", "alertmanager", "otelcol"))
        rendered = (native.run_dir / "alertmanager" / "rendered-alertmanager.yml").read_text()
        assert "T0-secret-token" not in rendered  # the URL is read from a private file
        secret = native.run_dir / "alertmanager" / "secrets" / "alertmanager_webhook_url"
        assert secret.read_text() == url and stat.S_IMODE(secret.stat().st_mode) == 0o600
        evaluate_every_second(native)

        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")}
        env.update(
            TRAINTEL_STACK_DIR=str(native.run_dir),
            OTEL_METRIC_EXPORT_INTERVAL="1000",
            TRAINTEL_DIR=str(tmp_path / "runs"),
            TRAINTEL_PROGRESS="off",
        )
        demo = subprocess.run(
            demo_command(
                "--epochs",
                "1",
                "--steps-per-epoch",
                "30",
                "--nan-at-step",
                "5",
                "--step-sleep",
                "0.05",
                "--sample-interval",
                "1",
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert demo.returncode == 0, demo.stderr[-3000:]

        def at_the_webhook():
            return [
                a
                for hook in _Hook.received
                for a in hook["body"]["alerts"]
                if a["labels"]["alertname"] == "LossNotFinite" and a["status"] == "firing"
            ]

        (alert,) = eventually(at_the_webhook, 120, what="LossNotFinite at the webhook")
        assert alert["labels"]["project"] == "demo"
        assert _Hook.received[0]["path"] == "/hooks/T0-secret-token"

        status = subprocess.run(
            [sys.executable, "-m", "traintel", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        line = next(line for line in status.stdout.splitlines() if "LossNotFinite" in line)
        assert line.split()[:2] == ["firing", "critical"]
        assert f"run={alert['labels']['run']}" in line and "-> team" in line
        stack_status = CliRunner().invoke(
            main, ["stack", "status", "--run-dir", str(native.run_dir)]
        )
        assert "LossNotFinite" in stack_status.output
    finally:
        native.down()
        server.shutdown()
