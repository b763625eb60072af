"""The live status endpoint: /metrics, /healthz, /status, /debug and /events on 127.0.0.1.

Built on the standard library's ``ThreadingHTTPServer``: one daemon thread accepts, one thread per
request answers. Live events reach ``/events`` through :class:`EventHub`, a sink of the run's event
pipeline that passes on the lines of events, milestones, evaluations and errors: the training
thread pays one ``deque.append`` per subscriber, and serialising and sending happen on the
subscriber's own thread.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .record.format import EventDict

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .record.pipeline import Pipeline

log = logging.getLogger("traintel.server")

#: events a slow /events client may fall behind by before the oldest are dropped
QUEUE_SIZE = 1000
#: seconds between progress snapshots on /events
PROGRESS_EVERY_S = 1.0


class Subscription:
    """One /events client: a bounded queue (oldest dropped) and a wake-up flag."""

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        self.lines: deque[dict[str, Any]] = deque(maxlen=size)
        self.wake = threading.Event()


class LiveRun(Protocol):
    """What the endpoint needs of a run (``traintel.run.Run`` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def debug(self) -> bool: ...

    def status_dict(self) -> Mapping[str, object]: ...

    def set_debug(self, enabled: bool, source: str = ...) -> None: ...


class EventHub:
    """Fans the run's own lines (not its component log lines) out to /events subscribers."""

    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.closed = False

    def __call__(self, line: EventDict, record: logging.LogRecord) -> None:
        if line.get("type") == "log":
            return
        for subscriber in list(self.subscribers):
            subscriber.lines.append(line)
            subscriber.wake.set()

    def subscribe(self) -> Subscription:
        subscription = Subscription()
        self.subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscribers.discard(subscription)

    def close(self) -> None:
        self.closed = True
        for subscriber in list(self.subscribers):
            subscriber.wake.set()


class _Server(ThreadingHTTPServer):
    """Request threads are daemons, so an open /events stream never keeps Python from exiting,
    yet ``server_close`` ends and joins them (the standard mixin joins only non-daemons)."""

    run: LiveRun
    hub: EventHub

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.requests: dict[threading.Thread, socket.socket] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve, args=(request, client_address),
                                  name="traintel-http-request", daemon=True)
        self.requests[thread] = request
        thread.start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.requests.pop(threading.current_thread(), None)

    def server_close(self) -> None:
        super().server_close()
        for thread, request in list(self.requests.items()):
            try:
                request.shutdown(socket.SHUT_RD)  # a waiting read returns; writes still go out
            except OSError:
                pass
            thread.join()


class _Server6(_Server):
    address_family = socket.AF_INET6


class StatusServer:
    """The run's HTTP endpoint. ``port=0`` picks a free port; ``.port`` says which."""

    def __init__(self, run: LiveRun, host: str = "127.0.0.1", port: int = 0) -> None:
        self.run = run
        self.host = host
        self.hub = EventHub()
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _Handler)
        self._server.run, self._server.hub = run, self.hub
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.2}, name="traintel-http", daemon=True)

    def start(self) -> StatusServer:
        self.run.pipeline.add_sink(self.hub)
        self._thread.start()
        log.info("status endpoint on http://%s:%d (/metrics /healthz /status /events)",
                 self.host, self.port)
        return self

    def stop(self) -> None:
        """End /events streams, stop accepting, close the socket and join every thread."""
        self.run.pipeline.remove_sink(self.hub)
        self.hub.close()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "traintel"
    #: a client that connects and says nothing gives its thread back after this many seconds
    timeout = 5

    def setup(self) -> None:
        super().setup()
        self.run, self.hub = self.server.run, self.server.hub

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.run.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, {"status": "ok", "run": self.run.id})
        elif path == "/status":
            self._json(200, {**self.run.status_dict(), "debug": self.run.debug})
        elif path == "/debug":
            self._json(200, {"enabled": self.run.debug})
        elif path == "/events":
            self._events()
        else:
            self._json(404, {"error": f"no {path}; try /metrics /healthz /status /events /debug"})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/debug":
            self._json(404, {"error": "only /debug accepts POST or PUT"})
            return
        if not _loopback(self.client_address[0]):
            self._json(403, {"error": "debug mode can only be switched from this machine"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            enabled = orjson.loads(self.rfile.read(length) or b"{}")["enabled"]
            if not isinstance(enabled, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._json(400, {"error": 'send {"enabled": true} or {"enabled": false}'})
            return
        self.run.set_debug(enabled, source="http")
        self._json(200, {"enabled": self.run.debug})

    do_PUT = do_POST

    def _events(self) -> None:
        """Server-sent events: record lines as they happen, a progress snapshot every second."""
        subscription = self.hub.subscribe()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            next_progress = 0.0
            while not self.hub.closed:
                if time.monotonic() >= next_progress:
                    self._event("progress", self.run.status_dict())
                    next_progress = time.monotonic() + PROGRESS_EVERY_S
                subscription.wake.wait(max(0.0, next_progress - time.monotonic()))
                subscription.wake.clear()
                while subscription.lines:
                    line = subscription.lines.popleft()
                    self._event(str(line.get("type", "event")), line)
        except OSError:  # the client went away
            pass
        finally:
            self.hub.unsubscribe(subscription)

    def _event(self, name: str, data: Any) -> None:
        self.wfile.write(b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n")
        self.wfile.flush()

    def _json(self, code: int, data: Any) -> None:
        self._send(code, _dumps(data), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not worth a line in the run record."""


def _dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback
