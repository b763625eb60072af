"""The collector ``traintel sync`` sends to: the OpenTelemetry SDK's OTLP/HTTP exporters, made
and configured as a live run's are (``traintel.export.selection.otlp_http``; the
``OTEL_EXPORTER_OTLP_*`` variables: endpoints per signal, headers, timeout in milliseconds,
compression, certificates), or at ``--endpoint``.

The SDK retries what is worth retrying (429, 502-504, connection errors) within its timeout;
what fails after that stops the sync with an error that says which signal and why, in the
words a live run's export failures use (``traintel.export.health.ExportSession``: the
connection error, or the HTTP status, here with the collector's own words; host and port, never
a URL, which may carry credentials). A probe (an empty export per signal, short timeout) says
so before anything is read.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData
from opentelemetry.sdk.trace.export import SpanExportResult

from traintel.core import env
from traintel.core.redact import Redactor
from traintel.export import selection
from traintel.export.health import SDK_MESSAGES, ExportSession, quiet_sdk_export_lines
from traintel.export.selection import PATHS
from traintel.record.format import Signal

_SUCCESS = (MetricExportResult.SUCCESS, LogRecordExportResult.SUCCESS, SpanExportResult.SUCCESS)
#: seconds the probe waits for each signal's endpoint
PROBE_TIMEOUT = 3.0


def _joined(base: str, path: str) -> str:
    """``--endpoint``'s URL with the signal's path appended to its path, before any query
    (``http://c:4318/?tenant=a`` -> ``http://c:4318/v1/metrics?tenant=a``)."""
    scheme, netloc, base_path, query, fragment = urlsplit(base)
    return urlunsplit((scheme, netloc, f"{base_path.rstrip('/')}/{path}", query, fragment))


def _without_password(url: str) -> str:
    scheme, netloc, path, query, fragment = urlsplit(url)
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:@{host}"
    return urlunsplit((scheme, netloc, path, query, fragment))


def _headers(signal: Signal) -> str | None:
    """The OTLP headers variable that applies to ``signal`` (its own, else the general one)."""
    own = env.variable(f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS").get()
    return own if own is not None else env.OTEL_EXPORTER_OTLP_HEADERS.get()


class SyncError(RuntimeError):
    """What stopped a sync, for people: the signal and the reason."""


class SyncSession(ExportSession):
    """A live export's session (reasons for failures, Retry-After honoured) that also counts
    the request bytes acknowledged and keeps what a refusing collector said."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_sent = 0
        self.said = ""

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        response = super().request(method, url, *args, **kwargs)
        if response.status_code < 400:
            body = kwargs.get("data")
            self.bytes_sent += len(body) if isinstance(body, (bytes, str)) else 0
            self.said = ""
        else:
            self.said = " ".join(response.text.split())[:300]
        return response


class Target:
    """A collector's OTLP/HTTP endpoints and the exporters that send to them."""

    def __init__(
        self, endpoint: str | None = None, exporters: dict[Signal, Any] | None = None
    ) -> None:
        """``exporters`` replace the OTLP/HTTP ones (tests send to memory)."""
        base = (endpoint or "").rstrip("/")
        self._explicit = bool(base)
        grpc = [signal for signal in PATHS if selection.protocol(signal) == "grpc"]
        if grpc and not base and exporters is None:
            raise SyncError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL says grpc for {', '.join(grpc)}: "
                "traintel sync speaks OTLP/HTTP; pass the collector's HTTP endpoint "
                "(--endpoint http://collector:4318)"
            )
        #: each signal's URL (``--endpoint``, else the OTEL_* variables as the SDK reads them)
        self.urls: dict[Signal, str] = {
            signal: _joined(base, path) if base else selection.http_url(signal)
            for signal, path in PATHS.items()
        }
        #: traintel's session of each signal, unless the user's credential provider gives one
        #: (its requests are then neither counted nor explained beyond the SDK's words)
        self.sessions: dict[Signal, SyncSession] = {
            signal: SyncSession() for signal in PATHS if not selection.users_session(signal)
        }
        quiet_sdk_export_lines()  # the SDK's per-attempt lines: a sync says failures once
        self._exporters = exporters or self._make(timeout=None)

    @property
    def key(self) -> str:
        """What names this target in a cursor: its URLs with any credentials in them (a
        password, a signed query) redacted, as everywhere a URL is written."""
        redactor = Redactor()
        key = " ".join(redactor.text(self.urls[signal]) for signal in PATHS)
        # two tenants behind one URL (X-Scope-OrgID, a token in the URL) are two targets: what
        # the redaction hid, and the headers, are kept as a hash; a URL's password is not (a
        # rotated password is the same tenant: its user name, kept in the key, says which)
        urls = " ".join(_without_password(self.urls[signal]) for signal in PATHS)
        headers = [f"{signal}:{value}" for signal in PATHS if (value := _headers(signal))]
        if headers or redactor.text(urls) != urls:
            hidden = [urls, *headers]
            digest = hashlib.sha256("\n".join(hidden).encode(errors="surrogateescape"))
            key += f" #{digest.hexdigest()[:16]}"
        return key

    @property
    def bytes_sent(self) -> int:
        return sum(session.bytes_sent for session in self.sessions.values())

    def probe(self) -> None:
        """An empty request per signal with a short timeout: :class:`SyncError` for a collector
        that cannot be reached or refuses OTLP, before anything is read."""
        quick = self._make(timeout=PROBE_TIMEOUT)
        try:
            for signal, exporter in quick.items():
                self._send(
                    signal,
                    exporter,
                    MetricsData(resource_metrics=[]) if signal == "metrics" else [],
                )
        finally:
            for exporter in quick.values():
                exporter.shutdown()

    def send(self, signal: Signal, items: Any) -> None:
        """Send one batch; :class:`SyncError` unless the collector acknowledged it."""
        self._send(signal, self._exporters[signal], items)

    def close(self) -> None:
        for exporter in self._exporters.values():
            exporter.shutdown()
        for session in self.sessions.values():
            session.close()

    def _make(self, timeout: float | None) -> dict[Signal, Any]:
        """The exporters a live run makes (``traintel.export.selection``), on this target's
        sessions; with ``--endpoint`` at its URLs, else at those the SDK reads from OTEL_*."""
        return {
            signal: selection.otlp_http(
                signal,
                self.sessions.get(signal),
                self.urls[signal] if self._explicit else None,
                timeout,
            )
            for signal in PATHS
        }

    def _send(self, signal: Signal, exporter: Any, items: Any) -> None:
        session = self.sessions.get(signal)
        if session is not None:
            session.reason = None
        SDK_MESSAGES.pop(signal, None)
        if exporter.export(items) in _SUCCESS:
            return
        reason = (
            (session and session.reason)
            or SDK_MESSAGES.get(signal)
            or "the exporter reported failure"
        )
        if session is not None and session.said:
            raise SyncError(f"the collector refused the {signal}: {reason}: {session.said}")
        raise SyncError(
            f"the collector did not take the {signal}: {reason}. Is it running "
            "(`traintel stack status`)? Point traintel sync at it with --endpoint "
            "or OTEL_EXPORTER_OTLP_ENDPOINT"
        )
