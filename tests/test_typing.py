"""The public API as a user's type checker sees it: mypy --strict, with any expression of type Any
refused, over a training script that uses every public call; each reveals the type it returns."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import traintel
    from traintel.testing import capture

    run = traintel.init(project="p", name="n", config={"lr": 0.1}, total_epochs=2,
                        http_port=0, sample_interval=0.0, progress="off")
    reveal_type(run)
    reveal_type(traintel.current_run())
    for epoch in run.epochs():
        reveal_type(epoch)
        for batch in run.track([1.0, 2.0]):
            reveal_type(batch)
            run.log(loss=batch, lr=0.1, samples=8)
    best = run.log_eval(val_loss=0.5)
    reveal_type(best)
    reveal_type(run.counter("skipped"))
    reveal_type(run.gauge("queue"))
    reveal_type(run.histogram("seq_len", buckets=[64, 128]))
    reveal_type(run.timer("forward"))
    with run.span("checkpoint") as span:
        reveal_type(span)
    reveal_type(run.logger("data"))
    reveal_type(run.check_finite(0.5))
    reveal_type(run.error(ValueError("x")))
    reveal_type(run.status_dict())
    run.finish()
    reveal_type(run.summary)
    with capture() as telemetry:
        reveal_type(telemetry)
    reveal_type(traintel.__version__)
""")

#: what each reveal_type shows (a TypedDict by its name: mypy prints its fields after it)
EXPECTED = [
    "traintel.run.facade.Run",
    "traintel.run.facade.Run | None",
    "int",
    "float",
    "dict[str, bool]",
    "traintel.run.instruments.Counter",
    "traintel.run.instruments.Gauge",
    "traintel.run.instruments.Histogram",
    "traintel.run.instruments.Timer",
    "opentelemetry.trace.span.Span",
    "logging.Logger",
    "float",
    "TypedDict(traintel.record.format.ErrorLine",
    "TypedDict(traintel.run.identity.LiveStatus",
    "traintel.run.usersummary.RunSummaryValues",
    "traintel.testing.Telemetry",
    "str",
]


def test_the_public_api_types_as_what_it_returns(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--disallow-any-expr",
            "--no-incremental",
            "--follow-imports",
            "silent",
            "--config-file",
            "",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "MYPYPATH": str(ROOT / "src"),
        },
    )
    revealed = re.findall(r'Revealed type is "([^"]+)"', done.stdout)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert errors == [], done.stdout
    assert len(revealed) == len(EXPECTED), (
        f"mypy exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    )
    for shown, expected in zip(revealed, EXPECTED):
        assert (
            shown == expected
            or expected.startswith("TypedDict(")
            and shown.startswith(expected + ",")
        ), (shown[:200], expected)
