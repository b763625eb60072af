"""Secrets at every exit, tenants kept apart, records shown as what they are (issue 28,
findings 13-17): each test triggers the finding as a user or an attacker would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import QUIET, traintel_cli
from reliability_log import record
from traintel.cli import main
from traintel.core.redact import REDACTED, Redactor, secret_values
from traintel.sync.cursor import Cursor
from traintel.sync.target import Target


# -- 13: two tenants behind one URL ------------------------------------------------------------
def test_two_tenants_behind_one_url_keep_two_cursors(monkeypatch, tmp_path):
    """Loki and Mimir tell tenants apart by X-Scope-OrgID; a signed query or a token in the URL
    does the same elsewhere. Each tenant's sync must have its own cursor, or the second receives
    nothing and hears 'synced before'."""
    keys = []
    for tenant in ("team-a", "team-b"):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"X-Scope-OrgID={tenant}")
        target = Target("http://127.0.0.1:4318")
        keys.append(target.key)
        target.close()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS")
    for token in ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"):
        target = Target(f"http://127.0.0.1:4318/?token={token}")
        keys.append(target.key)
        assert target.urls["metrics"] == f"http://127.0.0.1:4318/v1/metrics?token={token}"
        target.close()
    assert len(set(keys)) == 4
    record(
        "two tenants behind one sync URL (X-Scope-OrgID headers; a token in the URL)",
        "a cursor each: the second tenant receives everything",
        "4 targets, 4 cursor keys, none holding the tenant or token (one key shared before: "
        "the second tenant got nothing, exit 0)",
    )
    assert not any(
        secret in key
        for key in keys
        for secret in ("team-a", "team-b", "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb")
    )
    # one record, the first tenant acknowledged: the second still starts from nothing
    first = Cursor(tmp_path, "f" * 32, keys[0]).open()
    first.position.logs = 100
    first.save()
    first.close()
    assert Cursor(tmp_path, "f" * 32, keys[1]).peek().logs == 0
    assert Cursor(tmp_path, "f" * 32, keys[0]).peek().logs == 100


def test_a_target_without_headers_or_secrets_keeps_its_old_key(monkeypatch):
    """Cursors written before keep matching: the hash is added only where something was hidden."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
    target = Target("http://127.0.0.1:4318")
    assert target.key == (
        "http://127.0.0.1:4318/v1/metrics http://127.0.0.1:4318/v1/logs "
        "http://127.0.0.1:4318/v1/traces"
    )
    target.close()


# -- 14: records shown as what they are ------------------------------------------------------
def test_status_all_shows_empty_and_broken_records_as_empty(tmp_path, monkeypatch):
    for name, content in (("empty", b""), ("garbage", b"\x00\xffnot json\n{broken\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "events.jsonl").write_bytes(content)
    monkeypatch.setenv("TRAINTEL_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["status", "--all", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.stdout)
    statuses = {Path(row["dir"]).name: row["status"] for row in rows}
    assert statuses == {"empty": "empty", "garbage": "empty"}


# -- 15: the SDK's own log records ------------------------------------------------------------
def test_the_sdks_header_warning_prints_no_credentials(tmp_path):
    """A base64 value that wrapped onto a new line: the SDK cannot parse the header and prints
    it whole on stderr."""
    script = textwrap.dedent(f"""
        import traintel
        run = traintel.init(project="t", dir={str(tmp_path)!r}, progress="off",
                            console_logs=False, sample_interval=0)
        run.log(loss=1.0)
        run.finish()
    """)
    environ = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic MTIzNDU2Nzg5\nMDEyMzQ1Njc4OTA=",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=environ
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Header format invalid" in proc.stderr  # the SDK still says what is wrong
    assert f"Authorization={REDACTED}" in proc.stderr
    checked = [path for path in tmp_path.rglob("*") if path.is_file()]
    for piece in ("MTIzNDU2Nzg5", "MDEyMzQ1Njc4OTA"):
        assert piece not in proc.stderr
        for path in checked:
            assert piece.encode() not in path.read_bytes(), path
    record(
        "OTEL_EXPORTER_OTLP_HEADERS with a Basic credential wrapped onto a new line (the SDK "
        "cannot parse it and prints it)",
        "the SDK's warning kept, the credential not",
        f"stderr says 'Authorization={REDACTED}'; 0 credential pieces on stderr and in "
        f"{len(checked)} record files",
    )


# -- 16: what the redactor learns ------------------------------------------------------------
@pytest.mark.parametrize("name", ["PGPASSWORD", "SSHPASS", "KAGGLE_KEY"])
def test_well_known_secret_variables_are_learned(name):
    value = "s3cr3t-value-of-" + name.lower()
    redactor = Redactor(secret_values({}, {name: value}))
    assert redactor.text(f"connecting with {value} now") == f"connecting with {REDACTED} now"


def test_a_config_key_pw_and_otlp_header_values_are_learned():
    environ = {
        "OTEL_EXPORTER_OTLP_HEADERS": "x-honeycomb-team=hcaik_0123456789abcdef,"
        "x-other=plain%20tenant%2Dname",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "api-key=trace-only-key-42",
    }
    redactor = Redactor(secret_values({"db": {"pw": "hunter2hunter2"}}, environ))
    text = redactor.text(
        "pw hunter2hunter2 team hcaik_0123456789abcdef tenant plain tenant-name trace-only-key-42"
    )
    for secret in (
        "hunter2hunter2",
        "hcaik_0123456789abcdef",
        "plain tenant-name",
        "trace-only-key-42",
    ):
        assert secret not in text
    assert Redactor().deep({"pw": "hunter2hunter2"}) == {"pw": REDACTED}


@pytest.mark.parametrize(
    "prose",
    [
        "logged in with token abc123def456ghi789",
        "the password is Tr0ub4dor-and-3",
        "use api key: ak_live_123456789xyz",
        "secret `9f8e7d6c5b4a3210`",
    ],
)
def test_a_token_in_prose_is_redacted(prose):
    secret = prose.split()[-1].strip("`")
    assert secret not in Redactor().text(prose)


@pytest.mark.parametrize(
    "plain",
    [
        "the token count is 4096",
        "password reset required",
        "tokens per second",
        "the secret sauce",
        "key metric improved",
    ],
)
def test_prose_without_a_secret_is_left_alone(plain):
    assert Redactor().text(plain) == plain


@settings(max_examples=200, deadline=None)
@given(
    word=st.sampled_from(["token", "password", "secret", "api key", "passphrase"]),
    secret=st.from_regex(r"[A-Za-z]{4,10}[0-9]{4,10}[A-Za-z0-9_\-]{0,10}", fullmatch=True),
    before=st.text(st.characters(codec="ascii", categories=["L", "Zs"]), max_size=20),
)
def test_any_secret_after_a_secret_word_is_redacted(word, secret, before):
    assert secret not in Redactor().text(f"{before} {word} {secret}")


# -- 17: grafana push and every CLI error -----------------------------------------------------
@pytest.mark.parametrize("how", ["flag", "variable"])
def test_grafana_push_does_not_print_url_credentials(how):
    url = "http://admin:Sup3rS3cretPass@127.0.0.1:9"
    args = ["grafana", "push"] + (["--url", url] if how == "flag" else [])
    result = CliRunner().invoke(
        main,
        args,
        env={
            "GRAFANA_TOKEN": "glsa_0123456789abcdef0123456789abcdef_0123abcd",
            "GRAFANA_URL": url if how == "variable" else "",
        },
    )
    assert result.exit_code == 1
    assert "cannot reach Grafana at http://admin:[REDACTED]@127.0.0.1:9" in result.output
    assert "Sup3rS3cretPass" not in result.output


def test_a_cli_usage_error_does_not_print_url_credentials(tmp_path):
    result = CliRunner().invoke(main, ["status", "--url", "http://me:An0therS3cret@127.0.0.1:9"])
    assert "An0therS3cret" not in result.output


# -- 18: one odd tag must not break /metrics -------------------------------------------------
def test_a_tag_from_non_utf8_argv_does_not_break_either_exposition(tmp_path):
    import urllib.request

    import traintel

    tag = os.fsdecode(b"exp-\xff\xfe")  # what Python makes of a non-UTF-8 argv: lone surrogates
    run = traintel.init(
        project="t", dir=str(tmp_path), tags=["ok", tag], group=tag, http_port=0, **QUIET
    )
    try:
        run.log(loss=0.5)
        assert run.server is not None
        for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
            request = urllib.request.Request(
                f"http://127.0.0.1:{run.server.port}/metrics", headers={"Accept": accept}
            )
            body = urllib.request.urlopen(request, timeout=10).read().decode()
            assert 'tags="ok,exp-\\\\udcff\\\\udcfe"' in body, accept
            assert "traintel_loss" in body or "loss" in body
    finally:
        run.finish()


# -- 19: the sidecar listens on loopback only ------------------------------------------------
def test_the_sidecar_collector_binds_its_telemetry_and_health_to_loopback():
    """In sidecar mode the collector runs inside the training pod: its own metrics (8888) and
    health check (13133) must not listen beyond the pod, as the template says of OTLP."""
    from deploy_tools import chart_collectors

    crs = {d["spec"]["mode"]: d["spec"]["config"] for d in chart_collectors("sidecar")}
    sidecar = crs["sidecar"]
    assert sidecar["extensions"]["health_check"]["endpoint"] == "127.0.0.1:13133"
    (reader,) = sidecar["service"]["telemetry"]["metrics"]["readers"]
    assert reader["pull"]["exporter"]["prometheus"]["host"] == "127.0.0.1"
    assert sidecar["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "127.0.0.1:4318"
    gateway = next(config for mode, config in crs.items() if mode not in ("sidecar",))
    (reader,) = gateway["service"]["telemetry"]["metrics"]["readers"]
    assert reader["pull"]["exporter"]["prometheus"]["host"] == "0.0.0.0"  # scraped in-cluster


# -- 14: a full disk during sync is not a written cursor ---------------------------------------
def test_a_full_disk_during_sync_does_not_claim_the_cursor_was_written(tmp_path, quiet):
    """The real collector (our build) takes the batches; the record lives on a real full file
    system (a 256 KiB tmpfs, filled after the run: root only)."""
    import socket

    import traintel
    from traintel.stack import install

    collector = install.binary("otelcol")
    if collector is None:
        pytest.skip("the collector is not built here (traintel stack install)")
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "collector.yaml"
    config.write_text(
        textwrap.dedent(f"""
        receivers:
          otlp: {{protocols: {{http: {{endpoint: "127.0.0.1:{port}"}}}}}}
        exporters:
          debug: {{verbosity: basic}}
        service:
          telemetry: {{metrics: {{level: none}}}}
          pipelines:
            metrics: {{receivers: [otlp], exporters: [debug]}}
            logs: {{receivers: [otlp], exporters: [debug]}}
            traces: {{receivers: [otlp], exporters: [debug]}}
    """)
    )
    process = subprocess.Popen(
        [str(collector), "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run = traintel.init(project="t", dir=str(disk), mode="offline", **{**quiet, "otlp": None})
        for step in range(20):
            run.log(loss=1.0 / (step + 1))
        run.event("checkpoint", level="warning")
        run.finish()
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={disk / 'fill'}", "bs=4k", "count=1000"],
            capture_output=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as check:
                if check.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        proc = traintel_cli("sync", "--endpoint", f"http://127.0.0.1:{port}", str(run.dir))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "cannot write the sync cursor" in proc.stderr
        assert "the cursor was not updated" in proc.stderr
        assert "is in the cursor" not in proc.stderr
        record(
            "disk full during traintel sync (256 KiB tmpfs, the real collector taking the batches)",
            "the sync stops saying the cursor was not written",
            "exit 1; 'cannot write the sync cursor ... No space left on device' and 'the cursor "
            "was not updated' (before: 'what the collector acknowledged is in the cursor')",
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
        subprocess.run(["umount", str(disk)], capture_output=True)
