"""Many runs in one process (a sweep, a notebook): each run leaves nothing behind."""

from __future__ import annotations

import gc
import tracemalloc

import traintel
from traintel.core import forks


def test_memory_and_objects_stay_flat_over_a_thousand_runs(tmp_path, quiet) -> None:
    """Each run registered four ``os.register_at_fork`` callbacks (and the SDK's tracer provider
    a fifth), which can never be unregistered: +24 KB and +42 objects per run, ~24 MB per 1,000
    trials. Now the process registers once and a run's resets go with it."""

    def trial(number: int) -> None:
        with traintel.init(project="flat", dir=str(tmp_path), group="sweep", **quiet) as run:
            for step in range(3):
                run.log(loss=1.0 / (step + 1 + number))

    for number in range(30):  # warm: caches, lazy imports, the process's own registrations
        trial(number)
    gc.collect()
    pending = forks.pending()  # objects of other tests in this process may hold resets of theirs
    tracemalloc.start()
    try:
        objects, (memory, _) = len(gc.get_objects()), tracemalloc.get_traced_memory()
        for number in range(1000):
            trial(number)
        gc.collect()
        grown_objects = len(gc.get_objects()) - objects
        grown_memory = tracemalloc.get_traced_memory()[0] - memory
    finally:
        tracemalloc.stop()
    # slack for caches that settle (it was ~42,000 objects and ~24 MB)
    assert grown_objects < 500, grown_objects
    assert grown_memory < 256 * 1024, grown_memory
    assert forks.pending() - pending < 10  # the ended runs' resets are gone, not only dead


def test_a_sweep_with_its_collector_down_warns_once_and_counts_every_trial(
    tmp_path, quiet, monkeypatch, caplog
) -> None:
    """No collector listens on the port (a real refused connection, nothing stands in): the
    first trial finds it down and says so; the next ones neither wait for it again nor warn
    again (each waited 1.4 s and warned twice), yet every trial counts its failed exports."""
    import logging
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    caplog.set_level(logging.WARNING, logger="traintel")
    export_logger = logging.getLogger("traintel.export")
    export_logger.addHandler(caplog.handler)  # the run's logging tree may stop propagation
    try:
        summaries = []
        for trial in range(30):
            with traintel.init(
                project="down", dir=str(tmp_path), group="sweep", **{**quiet, "otlp": True}
            ) as run:
                run.log(loss=1.0 / (trial + 1))
            summaries.append(run.summary)
    finally:
        export_logger.removeHandler(caplog.handler)
    said = {r.getMessage() for r in caplog.records if r.name.startswith("traintel.export")}
    assert len(said) == 1, said
    (warning,) = said
    assert f"127.0.0.1:{port}" in warning and "connection refused" in warning
    assert not any("did not finish within" in text for text in said)
    for summary in summaries:
        assert summary is not None and sum(summary["export"]["failures"].values()) >= 1


def test_a_hung_collector_is_waited_for_by_the_first_trial_only(
    tmp_path, quiet, monkeypatch, caplog
) -> None:
    """A collector that accepts connections and never answers (a real listening socket that
    reads nothing): the first trial's end cuts its export after shutdown_timeout; the next
    trials know it is down and neither wait nor warn again."""
    import logging
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    export_logger = logging.getLogger("traintel.export")
    caplog.set_level(logging.WARNING, logger="traintel")
    export_logger.addHandler(caplog.handler)
    try:
        reasons = []
        for trial in range(4):
            with traintel.init(
                project="hung",
                dir=str(tmp_path),
                group="sweep",
                **{**quiet, "otlp": True, "shutdown_timeout": 0.5},
            ) as run:
                run.log(loss=1.0)
            reasons.append(run.summary["export"]["last_error"] or "")
    finally:
        export_logger.removeHandler(caplog.handler)
        listener.close()
    said = {r.getMessage() for r in caplog.records if r.name.startswith("traintel.export")}
    assert 1 <= len(said) <= 2, said  # the cut export, and the shutdown that cut it
    assert all("not tried again" in reason for reason in reasons[1:]), reasons
