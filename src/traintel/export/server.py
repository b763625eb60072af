"""The live status endpoint: the live page (/), /metrics, /healthz, /status, /debug and /events on
127.0.0.1.

Built on the standard library's ``ThreadingHTTPServer``: one daemon thread accepts, one thread per
request answers. Live events reach ``/events`` through :class:`EventHub`, a sink of the run's event
pipeline that passes on the lines of events, milestones, evaluations and errors: the training
thread pays one ``deque.append`` per subscriber, and serialising and sending happen on the
subscriber's own thread. The live page (``traintel.export.page``) asks ``/events?record=1``: the same
stream with every line of the run's record, read from the files on that thread.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client.exposition import choose_encoder, gzip_accepted

from traintel.export import page
from traintel.record.files import encode, write_json
from traintel.record.format import EventDict

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from traintel.record.pipeline import Pipeline

log = logging.getLogger("traintel.server")

#: events a slow /events client may fall behind by before the oldest are dropped
QUEUE_SIZE = 1000
#: the largest request body accepted (``{"enabled": false}`` is 18 bytes)
MAX_BODY_BYTES = 1024
#: /events streams open at once (each holds a thread)
MAX_SUBSCRIBERS = 16
#: the names a browser may use for this machine's loopback: any other Host header on a loopback
#: endpoint is a DNS-rebinding page talking to it through the victim's browser
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: seconds between progress snapshots on /events
PROGRESS_EVERY_S = 1.0
#: seconds between reads of the record for a live page's stream (the writer flushes every second)
RECORD_POLL_S = 0.5


class Subscription:
    """One /events client: a bounded queue (oldest dropped) and a wake-up flag. A live page's
    stream (``record``) reads the record instead: it gets no lines and is woken only when the
    hub closes (woken for every line, ten pages made ten threads take the interpreter after every
    step, and the training thread set ten flags per line)."""

    def __init__(self, size: int = QUEUE_SIZE, record: bool = False) -> None:
        self.lines: deque[dict[str, Any]] = deque(maxlen=size)
        self.wake = threading.Event()
        self.record = record


class ServedRun(Protocol):
    """What the endpoint needs of a run (``traintel.run.facade.Run`` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def debug(self) -> bool: ...

    @property
    def dir(self) -> Path: ...

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
            if not subscriber.record:
                subscriber.lines.append(line)
                subscriber.wake.set()

    def subscribe(self, record: bool = False) -> Subscription | None:
        """A new subscription, or None when MAX_SUBSCRIBERS streams are open already."""
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            return None
        subscription = Subscription(record=record)
        self.subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscribers.discard(subscription)

    def close(self) -> None:
        self.closed = True
        for subscriber in list(self.subscribers):
            subscriber.wake.set()


class Progress:
    """The live page's progress snapshot, made once per PROGRESS_EVERY_S for all its streams
    (``status_dict`` redacts the whole status: ten pages made it ten times a second). The
    streams ask at the same boundaries (multiples of the interval on the monotonic clock), so a
    snapshot is at most one interval old, as each stream's own was."""

    def __init__(self, run: ServedRun, every_s: float = PROGRESS_EVERY_S) -> None:
        self.run, self.every_s = run, every_s
        self.made = 0  #: snapshots made (for tests)
        self._lock = threading.Lock()
        self._tick: int | None = None
        self._body = b""

    def body(self) -> bytes:
        """The snapshot of this interval, encoded, made by the first stream to ask."""
        tick = int(time.monotonic() // self.every_s)
        with self._lock:
            if tick != self._tick:
                self._body = _dumps({**self.run.status_dict(), "debug": self.run.debug})
                self._tick, self.made = tick, self.made + 1
            return self._body

    def next_due(self) -> float:
        """When the next snapshot is due (monotonic seconds)."""
        return (time.monotonic() // self.every_s + 1) * self.every_s


class _Server(ThreadingHTTPServer):
    """Request threads are daemons, so an open /events stream never keeps Python from exiting,
    yet ``server_close`` ends and joins them (the standard mixin joins only non-daemons)."""

    run: ServedRun
    hub: EventHub
    #: whether Host headers are checked (a loopback bind; allow_remote_http binds are not)
    check_host: bool
    #: what the live page's streams share
    progress: Progress
    shared_reads: page.SharedReads

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.requests: dict[threading.Thread, socket.socket] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve,
            args=(request, client_address),
            name="traintel-http-request",
            daemon=True,
        )
        self.requests[thread] = request
        thread.start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.requests.pop(threading.current_thread(), None)

    def serve_until_woken(self, wake: socket.socket) -> None:
        """``serve_forever`` without its poll: the loop sleeps in select() on the listening
        socket and ``wake``, so a stop returns at once (``serve_forever`` looks at its shutdown
        flag every ``poll_interval``: 200 ms of every run's ``finish()``)."""
        self.timeout = 0  # handle_request below: the socket is known readable, never wait
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ, "accept")
            selector.register(wake, selectors.EVENT_READ, "wake")
            while True:
                for key, _ in selector.select():
                    if key.data == "wake":
                        return
                    self.handle_request()
                self.service_actions()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that broke its handler (a client gone mid-answer, a malformed request) is
        a debug line, never a traceback on the training process's stderr."""
        log.debug("status endpoint: request from %s failed", client_address, exc_info=True)

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

    def __init__(self, run: ServedRun, host: str = "127.0.0.1", port: int = 0) -> None:
        self.run = run
        self.host = host
        self.hub = EventHub()
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _Handler)
        self._server.run, self._server.hub = run, self.hub
        self._server.check_host = _is_loopback_host(host)
        self.progress, self.shared_reads = Progress(run), page.SharedReads()
        self._server.progress, self._server.shared_reads = self.progress, self.shared_reads
        self.port: int = self._server.server_address[1]
        self._wake, self._waker = socket.socketpair()
        self._thread = threading.Thread(
            target=self._server.serve_until_woken,
            args=(self._wake,),
            name="traintel-http",
            daemon=True,
        )

    def start(self) -> StatusServer:
        self.run.pipeline.add_sink(self.hub)
        self._thread.start()
        write_json(
            Path(self.run.dir) / page.PAGE_FILE, {"url": self.url, "pid": os.getpid()}, quiet=True
        )
        log.info("live page on %s (/metrics /healthz /status /events)", self.url)
        return self

    @property
    def url(self) -> str:
        """The live page's address (``[::1]`` in brackets; a wildcard bind as 127.0.0.1)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def stop(self) -> None:
        """End /events streams, stop accepting, close the socket and join every thread."""
        self.run.pipeline.remove_sink(self.hub)
        self.hub.close()
        try:
            (Path(self.run.dir) / page.PAGE_FILE).unlink()
        except OSError:
            pass
        if self._thread.is_alive():
            self._waker.send(b"x")
            self._thread.join()
        self._server.server_close()
        self._wake.close()
        self._waker.close()


class _Handler(BaseHTTPRequestHandler):
    """Reads for anyone on this machine; the one state change (``/debug``) only for requests a
    browser page cannot forge: JSON content, no foreign Origin, a loopback Host (checked on every
    request, against DNS rebinding), a body of at most MAX_BODY_BYTES. Each accepted change is an
    event in the record, with who asked."""

    server: _Server
    server_version = "traintel"
    #: a client that connects and says nothing gives its thread back after this many seconds
    timeout = 5

    def setup(self) -> None:
        super().setup()
        self.run, self.hub = self.server.run, self.server.hub

    def _host_refused(self) -> bool:
        """A Host header that does not name this machine's loopback: answered 421."""
        host = self.headers.get("Host")
        if (
            not self.server.check_host
            or host is None
            or _host_name(host) in LOOPBACK_NAMES
            or _host_name(host).endswith(".localhost")
        ):
            return False
        self._json(
            421,
            {
                "error": "this endpoint answers requests for localhost, 127.0.0.1 or "
                "[::1] only (the Host header names another server)"
            },
        )
        return True

    def do_GET(self) -> None:
        if self._host_refused():
            return
        path = self.path.split("?", 1)[0]
        file = page.page_file(path)
        if file is not None:
            self._send(
                200,
                *file,
                headers={
                    "Content-Security-Policy": page.CSP,
                    "X-Frame-Options": "DENY",
                    "Referrer-Policy": "no-referrer",
                },
            )
        elif path == "/page.json":
            self._json(200, {"links": page.links(), "debug": self.run.debug, "run": self.run.id})
        elif path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            self._json(200, {"status": "ok", "run": self.run.id})
        elif path == "/status":
            self._json(200, {**self.run.status_dict(), "debug": self.run.debug})
        elif path == "/debug":
            self._json(200, {"enabled": self.run.debug})
        elif path == "/events":
            self._events()
        else:
            self._json(404, {"error": f"no {path}; try / /metrics /healthz /status /events /debug"})

    def do_POST(self) -> None:
        if self._host_refused():
            return
        if self.path.split("?", 1)[0] != "/debug":
            self._json(404, {"error": "only /debug accepts POST or PUT"})
            return
        if not _loopback(self.client_address[0]):
            self._json(403, {"error": "debug mode can only be switched from this machine"})
            return
        refusal = self._unsafe_change()
        if refusal is not None:
            self._json(*refusal)
            return
        body = self._body()
        if body is None:
            return
        try:
            enabled = orjson.loads(body or b"{}")["enabled"]
            if not isinstance(enabled, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._json(400, {"error": 'send {"enabled": true} or {"enabled": false}'})
            return
        self.run.set_debug(enabled, source=f"http from {self.client_address[0]}")
        self._json(200, {"enabled": self.run.debug})

    do_PUT = do_POST

    def _unsafe_change(self) -> tuple[int, dict[str, str]] | None:
        """Why this state change is refused, or None. A page in a browser can send a "simple"
        cross-site POST (text/plain, no preflight): JSON content and a same-origin (or absent)
        Origin are what such a page cannot produce."""
        media_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return 415, {"error": "send Content-Type: application/json"}
        origin = self.headers.get("Origin")
        host = self.headers.get("Host")
        if origin is not None and (
            host is None or origin.rstrip("/") not in (f"http://{host}", f"https://{host}")
        ):
            return 403, {"error": "cross-origin requests cannot change this run"}
        return None

    def _body(self) -> bytes | None:
        """The request body, at most MAX_BODY_BYTES; None (and the answer sent) otherwise."""
        if self.headers.get("Transfer-Encoding"):
            self._json(411, {"error": "send a Content-Length, not a chunked body"})
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._json(400, {"error": "Content-Length must be a non-negative integer"})
            return None
        if length > MAX_BODY_BYTES:
            self._json(413, {"error": f"the body is limited to {MAX_BODY_BYTES} bytes"})
            return None
        return self.rfile.read(length)

    def _metrics(self) -> None:
        """The exposition as prometheus-client's own handlers answer: the format the scraper's
        ``Accept`` asks for (OpenMetrics or the text format), gzip when ``Accept-Encoding``
        allows it, and only the families named by ``name[]`` parameters when there are any."""
        encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
        registry: Any = self.run.registry
        names = parse_qs(urlsplit(self.path).query).get("name[]")
        if names:
            registry = registry.restricted_registry(names)
        body = encoder(registry)
        encoding = None
        if gzip_accepted(self.headers.get("Accept-Encoding") or ""):
            body, encoding = gzip.compress(body), "gzip"
        self._send(200, body, content_type, encoding)

    def _events(self) -> None:
        """Server-sent events: record lines as they happen, a progress snapshot every second;
        with ``?record=1`` (the live page) the record's lines from its first, in ``record``
        events (lists of lines), instead of the hub's."""
        record = parse_qs(urlsplit(self.path).query).get("record") == ["1"]
        subscription = self.hub.subscribe(record)
        if subscription is None:
            self._json(503, {"error": f"{MAX_SUBSCRIBERS} /events streams are open already"})
            return
        if record:
            try:
                self._record_events(subscription)
            finally:
                self.hub.unsubscribe(subscription)
            return
        try:
            self._stream_headers()
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

    def _record_events(self, subscription: Subscription) -> None:
        """The live page's stream: the record read on this thread, never the training one. The
        streams share their work (``Progress``, ``page.SharedReads``): with ten pages open, ten
        threads woke after each record flush and read, parsed and encoded the same lines ten
        times, holding the interpreter from the training thread (10-13 ms late steps in
        ``benchmarks/stalls.py``'s ``pages``)."""
        tail = page.RecordTail.open(Path(self.run.dir))
        shared = self.server.shared_reads
        try:
            self._stream_headers()
            next_progress = 0.0
            while not self.hub.closed:
                if time.monotonic() >= next_progress:
                    self._send_event("progress", self.server.progress.body())
                    next_progress = self.server.progress.next_due()
                body = tail.poll_encoded(shared)
                if body is not None:
                    self._send_event("record", body)
                    time.sleep(0)  # a long backlog: let the training thread in between batches
                    continue
                subscription.wake.wait(
                    max(0.0, min(RECORD_POLL_S, next_progress - time.monotonic()))
                )
                subscription.wake.clear()
            while (body := tail.poll_encoded()) is not None:  # the run's last lines, once ended
                self._send_event("record", body)
        except OSError:  # the client went away
            pass
        finally:
            tail.close()

    def _stream_headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def _event(self, name: str, data: Any) -> None:
        self._send_event(name, _dumps(data))

    def _send_event(self, name: str, body: bytes) -> None:
        self.wfile.write(b"event: " + name.encode() + b"\ndata: " + body + b"\n\n")
        self.wfile.flush()

    def _json(self, code: int, data: Any) -> None:
        self._send(code, _dumps(data), "application/json")

    def _send(
        self,
        code: int,
        body: bytes,
        content_type: str,
        encoding: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not worth a line in the run record."""


def _dumps(data: Any) -> bytes:
    return encode(data)


def _host_name(host: str) -> str:
    """The name of a Host header without its port (``[::1]:8080`` -> ``::1``), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback_host(host: str) -> bool:
    return host in LOOPBACK_NAMES or _loopback(host)


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback
