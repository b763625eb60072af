"""Export health: every failed export counted and said, whatever the failure, and nothing exported
from a forked child.

The OTLP/HTTP exporters fail in several ways: the collector refuses the connection, accepts it
and never answers, answers 429/503 with a ``Retry-After`` longer than the export timeout, or
rejects the payload (4xx). The SDK retries some of these and then logs a line that is easy to
miss, or none that says why. Here each signal's exporter is wrapped by an :class:`ExportGate`:

- a failed export (a FAILURE result, or an exception) is counted per signal in the run state
  (``traintel_export_failures_total{signal}`` on ``/metrics``, ``/status``, summary.json) and
  said in one warning with the reason, then at most once every ``WARN_EVERY_S`` with the count;
- the reason comes from the exporter's :class:`ExportSession` (a ``requests.Session`` the SDK
  accepts by its constructor), which sees every response and connection error: "HTTP 429, retry
  after 120 s", "no answer within 10 s", "connection refused by collector:4318". Only host and
  port are named, never the URL (it may carry credentials);
- a ``Retry-After`` from a 429/503 is honoured: until it passes, exports fail at once, counted,
  without sending;
- in a forked child (a data-loader worker) the gate closes: the child's copy of the run state is
  the parent's at the fork, and exporting it under the same run and rank labels would make the
  exported counters jump backwards;
- a collector found down (an export that failed for want of a connection or an answer, after the
  SDK's own retries) is known down to the whole process for ``DOWN_RECHECK_S``: exports to it
  fail at once, counted, without a connection attempt or the SDK's backoff, and its warning is
  said once per process, not by every run. In a sweep each trial's ``finish()`` waited 1.4 s
  and warned twice for a collector the previous trial had already found down; now the first
  trial pays and the next ones end in milliseconds. A success clears it;
- at shutdown, :meth:`ExportSession.abort` cuts the connections of exports still in flight, so
  that a hung collector cannot keep export threads alive after ``finish()``.
"""

from __future__ import annotations

import importlib
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from traintel.core.forks import reset_in_child
from traintel.core.state import RunState

log = logging.getLogger("traintel.export")

Signal = Literal["metrics", "traces", "logs"]
SIGNALS: tuple[Signal, ...] = ("metrics", "traces", "logs")
#: seconds between repeated export warnings (the first failure is said at once)
WARN_EVERY_S = 300.0
#: the longest Retry-After honoured (a collector asking for an hour is asking for too much)
MAX_RETRY_AFTER_S = 600.0
#: how long a collector found down is not tried again by any run of this process
DOWN_RECHECK_S = 10.0
_R = TypeVar("_R")
#: collectors (host:port) found down in this process, and when (time.monotonic())
_down: dict[str, float] = {}
#: collectors that refused a connection or did not answer in this process, and when
_refused: dict[str, float] = {}
#: why each collector in ``_refused`` failed
_causes: dict[str, str] = {}
#: collectors whose being down this process has already said in a warning
_said_down: set[str] = set()
#: modules the HTTP stack imports at its first request: requests reads ~/.netrc (``netrc``,
#: ``shlex``), urllib3-future (urllib3's name where niquests is installed) its HTTP/1.1 protocol
#: (``h11``). Imported on an exporter's thread at the first export, they held the interpreter for
#: 10-20 ms (the first metric collection: 14-20 ms of CPU, the later ones 3.5-4.5 ms), a late
#: training step per run; :class:`ExportSession` imports them when the run starts instead
LAZY_IMPORTS = ("netrc", "shlex", "urllib3.contrib.hface.protocols.http1")


class Throttled(requests.RequestException):
    """An export not sent because the collector asked to wait (Retry-After)."""


class CollectorDown(requests.RequestException):
    """An export not sent because this process found its collector down moments ago (not a
    connection error: the SDK does not retry it)."""


def known_down(where: str, ending: bool = False) -> float | None:
    """Seconds since ``where`` (host:port) was found down in this process, within the window
    in which it is not tried again; None when it may be tried. ``ending``: for the last export
    of a run, one refused connection is enough (the SDK would retry it for the rest of the
    run's shutdown timeout, with nothing to gain: the record keeps everything)."""
    since = time.monotonic() - max(
        _down.get(where, -float("inf")),
        _refused.get(where, -float("inf")) if ending else -float("inf"),
    )
    return since if since < DOWN_RECHECK_S else None


class ExportSession(requests.Session):
    """The HTTP session of one signal's exporter: says why an export failed, honours
    ``Retry-After``, and can cut the connections in flight (:meth:`abort`)."""

    def __init__(self) -> None:
        super().__init__()
        #: why the last request failed (None after a success)
        self.reason: str | None = None
        self._wait_until = 0.0
        self._throttled_by = ""
        self._cut = False
        #: host:port of the last request, and whether it failed without an answer
        self.where = ""
        self.unreachable = False
        #: whether the last export was refused here because its collector is known down
        self.known_down = False
        #: set when the run ends: its last exports give up at the first refused connection
        self.ending = False
        self._adapter = _TrackingAdapter()
        self.mount("http://", self._adapter)
        self.mount("https://", self._adapter)
        for module in LAZY_IMPORTS:  # on the thread starting the run, not at the first export
            try:
                importlib.import_module(module)
            except ImportError:  # plain urllib3 has no hface
                pass

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        where = self.where = _where(url)
        self.known_down = self.unreachable = False
        since = known_down(where, self.ending)
        if since is not None:
            self.known_down = True
            self.reason = (
                f"{_causes.get(where, f'cannot connect to {where}')}; not tried "
                f"again by this process for {DOWN_RECHECK_S - since:.0f} s"
            )
            raise CollectorDown(self.reason)
        if self._cut:  # the run has ended: no new connection (the SDK retries once at once)
            self.reason = (
                f"no answer from {where} before the run's end cut the export (a hung "
                "or overloaded collector)"
            )
            raise requests.ConnectionError(self.reason)
        wait = self._wait_until - time.monotonic()
        if wait > 0:
            self.reason = f"{self._throttled_by}; not sent, {wait:.0f} s of the wait left"
            raise Throttled(self.reason)
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.Timeout:
            self.unreachable = True
            self.reason = (
                f"no answer from {where} within {kwargs.get('timeout') or '?'} s "
                "(a hung or overloaded collector)"
            )
            _refused[where], _causes[where] = time.monotonic(), self.reason
            raise
        except requests.ConnectionError as exc:
            # refused, or in flight until the run's end cut it (a hung collector): either way
            # the next run of this process does not wait for it again
            self.unreachable = True
            self.reason = (
                (
                    f"no answer from {where} before the run's end cut the export (a hung "
                    "or overloaded collector)"
                )
                if self._cut
                else f"cannot connect to {where} ({_cause(exc)})"
            )
            _refused[where], _causes[where] = time.monotonic(), self.reason
            raise
        _down.pop(where, None)  # it answered
        _refused.pop(where, None)
        _said_down.discard(where)
        if response.status_code < 400:
            self.reason = None
            return response
        self.reason = f"{where} answered HTTP {response.status_code} {response.reason or ''}"
        after = retry_after(response.headers)
        if response.status_code in (429, 503) and after is not None:
            self._wait_until = time.monotonic() + min(after, MAX_RETRY_AFTER_S)
            self.reason += f", Retry-After {after:.0f} s"
            self._throttled_by = self.reason
        return response

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        """As requests merges, but the CA file the exporter set (OTEL_EXPORTER_OTLP_CERTIFICATE)
        is not replaced by REQUESTS_CA_BUNDLE (``traintel.export.selection``)."""
        from traintel.export.selection import keep_own_ca

        return keep_own_ca(
            self, super().merge_environment_settings(url, proxies, stream, verify, cert), verify
        )

    def export_failed(self) -> bool:
        """An export through this session failed (the SDK's retries spent): if for want of a
        connection, its collector is known down to the process. Whether to say so (only the
        first time in the process)."""
        if not (self.unreachable or self.known_down):
            return True
        if self.unreachable:
            _down[self.where] = time.monotonic()
        if self.where in _said_down:
            return False
        _said_down.add(self.where)
        return True

    def abort(self) -> None:
        """Cut every connection, those in flight included: a blocked read returns at once."""
        self._cut = True
        self._adapter.abort()


class _TrackingAdapter(HTTPAdapter):
    """Remembers the sockets of the connections it makes (urllib3's pool classes, subclassed per
    adapter) so that :meth:`abort` can shut them down, which a pool's ``close`` does not do for a
    connection in use. The socket is taken when the connection is made: some urllib3 builds
    (urllib3-future) do not keep it on the connection while a response is awaited."""

    def __init__(self) -> None:
        self.sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self.aborted = False
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _tracked(HTTPConnectionPool, HTTPConnection, self),
            "https": _tracked(HTTPSConnectionPool, HTTPSConnection, self),
        }

    def made(self, sock: socket.socket | None) -> None:
        if sock is not None:
            self.sockets.add(sock)
            if self.aborted:  # connected after the abort: cut at once
                _shut(sock)

    def abort(self) -> None:
        self.aborted = True
        for sock in list(self.sockets):
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _tracked(
    pool: type[HTTPConnectionPool], connection: type[HTTPConnection], adapter: _TrackingAdapter
) -> type[HTTPConnectionPool]:
    def connect(self: HTTPConnection) -> None:
        connection.connect(self)
        adapter.made(getattr(self, "sock", None))

    tracked = type(f"Tracked{connection.__name__}", (connection,), {"connect": connect})
    return type(f"Tracked{pool.__name__}", (pool,), {"ConnectionCls": tracked})


def retry_after(headers: Mapping[str, str]) -> float | None:
    """A ``Retry-After`` header in seconds (delay-seconds or an HTTP date), or None."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None


def _where(url: str | bytes) -> str:
    """``host:port`` of a URL: never the URL itself, which may carry credentials."""
    parts = urlsplit(url.decode() if isinstance(url, bytes) else url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.hostname or '?'}:{port or ('443' if parts.scheme == 'https' else '80')}"


def _cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, short (``connection refused``)."""
    while exc.__context__ is not None and not isinstance(exc, OSError):
        exc = exc.__context__
    text = getattr(exc, "strerror", None) or str(exc).split(": ")[-1]
    return str(text).strip("()'\"").lower()[:120]


class ExportHealth:
    """A run's export failures: counted in the run state, said in rate-limited warnings."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._warned_at = -float("inf")
        self._unsaid = 0

    def failed(self, signal: Signal, reason: str, say: bool = True) -> None:
        """Count a failed export; warn unless ``say`` is False (a collector already said down
        in this process)."""
        state = self.state
        with self._lock:
            state.export_failures[signal] = state.export_failures.get(signal, 0) + 1
            state.export_error = f"{signal}: {reason}"
            if not say:
                return
            now = time.monotonic()
            if now - self._warned_at < WARN_EVERY_S:
                self._unsaid += 1
                return
            since, self._unsaid, self._warned_at = self._unsaid, 0, now
        total = sum(state.export_failures.values())
        log.warning(
            "traintel: OTLP export of %s failed: %s. %d export(s) failed in this run "
            "so far%s; the local record is complete. Check the collector with "
            "`traintel doctor`",
            signal,
            reason,
            total,
            f" ({since} since the last warning)" if since else "",
        )


class ExportGate:
    """In front of one signal's exporter: closed in a forked child; failures counted with their
    reason (the session's, else the SDK's last log line, else the exception)."""

    def __init__(
        self, signal: Signal, health: ExportHealth, session: ExportSession | None = None
    ) -> None:
        self.signal = signal
        self.health = health
        self.session = session
        # zero from the start, so that rate() and dashboards see the series before any failure
        health.state.export_failures.setdefault(signal, 0)
        #: False in a forked child: nothing it holds is its own to export
        self.open = True
        reset_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self.open = False

    def run(self, export: Callable[[], _R], success: _R, failure: _R) -> _R:
        if not self.open:
            return success
        try:
            result = export()
        except Exception as exc:  # an exporter may raise; the SDK's processors log it raw
            self.health.failed(
                self.signal, self._reason() or f"{type(exc).__name__}: {exc}", self._say()
            )
            return failure
        if result != success:
            self.health.failed(
                self.signal, self._reason() or "the exporter reported failure", self._say()
            )
        return result

    def _say(self) -> bool:
        return self.session.export_failed() if self.session is not None else True

    def _reason(self) -> str | None:
        if self.session is not None and self.session.reason:
            return self.session.reason
        return SDK_MESSAGES.get(self.signal)


class GatedSpanExporter(SpanExporter):
    def __init__(self, exporter: SpanExporter, gate: ExportGate) -> None:
        self.exporter = exporter
        self.gate = gate

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.gate.run(
            lambda: self.exporter.export(spans), SpanExportResult.SUCCESS, SpanExportResult.FAILURE
        )

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class GatedLogExporter(LogRecordExporter):
    def __init__(self, exporter: LogRecordExporter, gate: ExportGate) -> None:
        self.exporter = exporter
        self.gate = gate

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return self.gate.run(
            lambda: self.exporter.export(batch),
            LogRecordExportResult.SUCCESS,
            LogRecordExportResult.FAILURE,
        )

    def shutdown(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


# -- the SDK's own lines about export --------------------------------------------------------
#: the SDK's last line about a failed export, per signal: a reason where the session saw none
SDK_MESSAGES: dict[Signal, str] = {}
#: the SDK's loggers that speak about exports, and the signal each speaks for
_SDK_LOGGERS: dict[str, Signal | None] = {
    "opentelemetry.exporter.otlp.proto.http.metric_exporter": "metrics",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter": "traces",
    "opentelemetry.exporter.otlp.proto.http._log_exporter": "logs",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter": "metrics",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter": "traces",
    "opentelemetry.exporter.otlp.proto.grpc._log_exporter": "logs",
    "opentelemetry.exporter.otlp.common.http": None,
}


class SdkExportLines(logging.Filter):
    """Keeps the SDK's per-attempt export lines off the console (they repeat every few seconds
    and can print the collector's URL, credentials included); the gates say what failed, once,
    and this filter keeps the SDK's text as the reason when the session has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            signal = _SDK_LOGGERS.get(record.name)
            if signal is not None:
                try:
                    SDK_MESSAGES[signal] = str(record.getMessage())[:300]
                except (TypeError, ValueError):
                    pass
        return False


_quieted = False


def quiet_sdk_export_lines() -> None:
    """Install :class:`SdkExportLines` on the SDK's export loggers (once per process)."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    chatter = SdkExportLines()
    for name in _SDK_LOGGERS:
        logging.getLogger(name).addFilter(chatter)
