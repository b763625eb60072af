"""The secrets corpus through a real training run, grepped across every output channel: the
run's files, the training process's stdout and stderr (console, progress, the uncaught
exception), the command line's output, and the OTLP payloads the real collector received."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from adv_helpers import ROOT, files_under, leaks, run_script, script_env
from secrets_corpus import LOOK_ALIKE_CONFIG, OPENAI_KEY, SECRET_CONFIG, URL_PASSWORD

from conftest import traintel_cli
from reliability_log import record
from stack_fixture import eventually

SCRIPT = """
import sys, urllib.request
import traintel
from secrets_corpus import *

config = {**SECRET_CONFIG, **LOOK_ALIKE_CONFIG, "argv": ARGV}
run = traintel.init(project="secrets", dir=sys.argv[1], config=config, progress="lines",
                    progress_interval=0, console_logs=True, sample_interval=0, otlp=True,
                    http_port=0, flush_interval=0.05, step_span_every=1, shutdown_timeout=5)
log = run.logger("data")
for i, text in enumerate(SECRET_TEXTS):
    run.log(loss=1.0 / (i + 1), step_s=0.01)
    log.warning(text, extra={"url": SIGNED_URL, "headers": {"Authorization": f"Bearer {BEARER}"},
                             "password": "plain-pw-Xy12"})
    run.event("checkpoint", note=text, argv=ARGV, url=URL_WITH_CREDENTIALS)
    with run.span("upload", url=SIGNED_URL, note=text):
        pass
    try:
        raise ConnectionError(text)
    except ConnectionError as exc:
        run.error(exc, context={"dsn": SECRET_CONFIG["db"]["dsn"], "text": text})
base = f"http://127.0.0.1:{run.server.port}"
print(urllib.request.urlopen(base + "/status").read().decode())
print(run.id, flush=True)
raise RuntimeError(f"fatal: {SECRET_TEXTS[1]} while pushing to {URL_WITH_CREDENTIALS}")
"""

CLI = [
    ["logs", "summary", "{run}"],
    ["logs", "summary", "{run}", "--format", "json"],
    ["logs", "errors", "{run}", "-v"],
    ["logs", "errors", "{run}", "--format", "json"],
    ["logs", "grep", ".", "{run}"],
    ["logs", "tail", "{run}", "-n", "200"],
    ["logs", "tail", "{run}", "-n", "200", "--format", "json"],
    ["logs", "report", "{run}"],
    ["logs", "metrics", "{run}"],
    ["report", "{run}"],
    ["report", "{run}", "--format", "md"],
    ["status", "{run}"],
    ["report"],
]


@pytest.mark.stack
def test_no_secret_reaches_any_output_channel(stack, tmp_path):
    collector = stack.endpoints["otlp_http"]
    scheme, rest = collector.split("://", 1)
    env = script_env(
        **{
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{Path(__file__).parent}",
            # credentials in the collector's URL, secrets in the environment and the resource
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"{scheme}://alice:{URL_PASSWORD}@{rest}",
            "OTEL_RESOURCE_ATTRIBUTES": f"deployment.environment=adversarial,team.api_key={OPENAI_KEY}",
            "HF_TOKEN": "hfvalue-Kq3mZ8xP2",
            "WANDB_API_KEY": "openai-value-r4T7yU1",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "TRAINTEL_DIR": str(tmp_path),
        }
    )
    proc = run_script(SCRIPT, env=env, args=[str(tmp_path)])
    assert proc.returncode == 1 and "RuntimeError: fatal" in proc.stderr, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]
    run_dir = tmp_path / run_id
    channels: dict[str, str | bytes] = {"stdout": proc.stdout, "stderr": proc.stderr}
    channels.update(
        {f"file {p.relative_to(tmp_path)}": data for p, data in files_under(run_dir).items()}
    )
    assert (run_dir / "crash-report.json").exists()
    for command in CLI:
        args = [a.format(run=run_id) for a in command]
        done = traintel_cli(*args, env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
        channels[f"traintel {' '.join(args)}"] = done.stdout + done.stderr

    def exported() -> dict[str, bytes] | None:
        taps = {
            s: stack.tap_file(s).read_bytes() if stack.tap_file(s).exists() else b""
            for s in ("logs", "traces", "metrics")
        }
        ours = [run_id.encode() in taps[s] for s in taps]
        return taps if all(ours) else None

    taps = eventually(exported, 60, what="the run's logs, spans and metrics at the collector")
    channels.update({f"OTLP {s} received by the collector": data for s, data in taps.items()})
    found = {name: leaks(data) for name, data in channels.items()}
    assert {name: secrets for name, secrets in found.items() if secrets} == {}
    config = orjson.loads((run_dir / "config.json").read_bytes())["config"]
    assert {k: config[k] for k in LOOK_ALIKE_CONFIG} == LOOK_ALIKE_CONFIG
    assert set(SECRET_CONFIG) <= set(config)
    record(
        "secrets corpus (27 secrets: config keys, token formats, URL credentials, bearer/basic"
        " auth, signed URLs, --hf-token argv, PEM keys, env) through a real failing run",
        "no secret in any output channel; look-alikes (sort_key, pad_token, rng_key...) kept",
        f"0 secrets in {len(channels)} channels: {len(files_under(run_dir))} files, stdout, "
        f"stderr (console, progress, excepthook), {len(CLI)} CLI outputs, OTLP logs, traces "
        f"and metrics at the collector; {len(LOOK_ALIKE_CONFIG)} look-alikes intact",
    )
