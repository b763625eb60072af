"""The live endpoint under hostile requests: a state change only from requests a browser page
cannot forge, every accepted change noted in the record, no request answered by a traceback."""

from __future__ import annotations

import http.client
import socket

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import traintel
from reliability_log import record
from traintel.export.server import MAX_BODY_BYTES


@pytest.fixture(scope="module")
def live(tmp_path_factory, quiet):
    run = traintel.init(
        project="http", dir=str(tmp_path_factory.mktemp("http")), **quiet, http_port=0
    )
    run.accepted = []  # type: ignore[attr-defined]  # (enabled, ...) of each accepted change
    yield run
    run.finish()


def _send(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _host_ok(host: str | None) -> bool:
    if host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":")[0]
    return name in ("localhost", "127.0.0.1", "::1") or name.endswith(".localhost")


HOSTS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "[::1]",
            "foo.localhost",
            "evil.example",
            "127.0.0.1.nip.io",
            "localhost.evil.com",
            "",
            "127.0.0.2",
            "0.0.0.0",
        ]
    ),
    st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True),
)
TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "json",
        ]
    ),
)
BODIES = st.one_of(
    st.sampled_from(
        [
            b'{"enabled": true}',
            b'{"enabled": false}',
            b"{}",
            b'{"enabled": "yes"}',
            b"enabled=true",
            b"",
            b"[1]",
            b'{"enabled": true}' + b" " * 2000,
        ]
    ),
    st.binary(max_size=64),
)


#: a request that changes the run, field by field; each test example breaks some of the fields
VALID = {
    "method": "POST",
    "path": "/debug",
    "host": "localhost",
    "port_in_host": True,
    "origin": None,
    "content_type": "application/json",
    "length": "exact",
    "body": b'{"enabled": true}',
}
HOSTILE = {
    "method": st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    "path": st.sampled_from(
        ["/debug?x=1", "/status", "/metrics", "/healthz", "/nope", "//debug", "/debug/.."]
    ),
    "host": HOSTS,
    "port_in_host": st.booleans(),
    "origin": st.sampled_from(
        ["null", "http://evil.example", "https://evil.example", "SAME", "SAME/"]
    ),
    "content_type": TYPES,
    "length": st.sampled_from(["missing", "huge", "negative", "garbage"]),
    "body": BODIES,
}


@st.composite
def requests_(draw):
    broken = draw(st.sets(st.sampled_from(sorted(HOSTILE)), max_size=4))
    request = dict(VALID, body=draw(st.sampled_from([b'{"enabled": true}', b'{"enabled": false}'])))
    request.update({field: draw(HOSTILE[field]) for field in broken})
    return request


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=requests_())
def test_only_unforgeable_requests_change_the_run(live, capfd, request):
    method, path, host, origin = (
        request["method"],
        request["path"],
        request["host"],
        request["origin"],
    )
    content_type, length, body = request["content_type"], request["length"], request["body"]
    port = live.server.port
    if host and request["port_in_host"] and not host.endswith("]") and ":" not in host:
        host = f"{host}:{port}"
    headers: dict[str, str] = {}
    if host is not None:
        headers["Host"] = host
    if origin is not None:
        headers["Origin"] = f"http://{host}" + origin[4:] if origin.startswith("SAME") else origin
    if content_type is not None:
        headers["Content-Type"] = content_type
    sent = body
    if length == "exact":
        headers["Content-Length"] = str(len(body))
    elif length == "huge":
        headers["Content-Length"], sent = str(10**12), b""
    elif length == "negative":
        headers["Content-Length"], sent = "-5", b""
    elif length == "garbage":
        headers["Content-Length"], sent = "12abc", b""
    else:
        sent = b""
    before = live.debug
    status, answer = _send(port, method, path, headers, sent)
    try:
        wanted = orjson.loads(sent)["enabled"] if length == "exact" and sent else None
    except (orjson.JSONDecodeError, TypeError, KeyError):
        wanted = None
    origin_ok = "Origin" not in headers or (
        host is not None and headers["Origin"].rstrip("/") in (f"http://{host}", f"https://{host}")
    )
    # http.server reads "//debug" as "/debug" (so does the oracle)
    accepted = (
        method in ("POST", "PUT")
        and "/" + path.split("?")[0].lstrip("/") == "/debug"
        and _host_ok(host)
        and (content_type or "").split(";")[0].strip().lower() == "application/json"
        and origin_ok
        and length == "exact"
        and len(body) <= MAX_BODY_BYTES
        and isinstance(wanted, bool)
    )
    if accepted:
        assert status == 200 and live.debug == wanted, (status, answer)
        live.accepted.append(wanted)
    else:
        assert live.debug == before, (status, answer, headers)
        assert status >= 400 or method in ("GET", "HEAD"), status
        if not _host_ok(host):
            assert status in (421, 501), status  # 501: a method the server does not have
    assert b"Traceback" not in answer
    assert "Traceback" not in capfd.readouterr().err


def test_every_accepted_change_is_in_the_record(live, recorded):
    live.flush()
    changes = [
        e["fields"]["enabled"]
        for e in recorded(live.dir)
        if e["type"] == "event" and e["event"] == "debug_mode"
    ]
    assert changes == live.accepted and len(changes) >= 10
    record(
        "hypothesis: 300 HTTP requests (methods, Host, Origin, Content-Type, Content-Length, "
        "bodies) at the live endpoint",
        "state changes only from unforgeable requests, each in the record; no traceback",
        f"{len(live.accepted)} changes accepted, each with a debug_mode event; the rest "
        "refused (403/411/413/415/421/400/404/501)",
    )


def test_a_cross_site_simple_post_cannot_switch_debug(tmp_path, capfd, quiet):
    """What a page on another site can make a browser send without a preflight."""
    with traintel.init(project="p", dir=str(tmp_path), **quiet, http_port=0) as run:
        port = run.server.port
        for content_type, refused in (("text/plain", 415), ("application/json", 403)):
            status, _ = _send(
                port,
                "POST",
                "/debug",
                {
                    "Host": f"127.0.0.1:{port}",
                    "Origin": "https://evil.example",
                    "Content-Type": content_type,
                    "Content-Length": "17",
                },
                b'{"enabled": true}',
            )
            assert status == refused and not run.debug, content_type
        # DNS rebinding: the attacker's name resolves to 127.0.0.1; the Host header says so
        for path in ("/status", "/metrics"):
            status, body = _send(port, "GET", path, {"Host": f"rebind.evil.example:{port}"}, b"")
            assert status == 421 and b"run" not in body.lower().replace(b"runs", b"")
        status, _ = _send(
            port,
            "POST",
            "/debug",
            {
                "Host": f"127.0.0.1:{port}",
                "Content-Type": "application/json",
                "Content-Length": str(10**12),
            },
            b"",
        )
        assert status == 413
    assert "Traceback" not in capfd.readouterr().err
    record(
        "cross-site text/plain POST, foreign Origin, DNS-rebinding Host, Content-Length 1e12",
        "refused without a traceback",
        "415, 403, 421 (/status and /metrics), 413; debug unchanged; stderr clean",
    )


def test_slow_and_half_open_clients_do_not_hold_the_endpoint(tmp_path, capfd, quiet):
    with traintel.init(project="p", dir=str(tmp_path), **quiet, http_port=0) as run:
        port = run.server.port
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(
            b"POST /debug HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
            b'application/json\r\nContent-Length: 17\r\n\r\n{"ena'
        )
        status, body = _send(port, "GET", "/healthz", {"Host": "localhost"}, b"")
        assert status == 200 and orjson.loads(body)["status"] == "ok"
        for sock in [*idle, half]:
            sock.close()
    assert "Traceback" not in capfd.readouterr().err
