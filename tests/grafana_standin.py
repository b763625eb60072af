"""A stand-in for Grafana 13's HTTP API (no Grafana binary can run here: it is AGPL and needs its
frontend build), written from Grafana's HTTP API documentation (the legacy ``/api`` routes, which
Grafana 13 keeps: folders, data sources, dashboards, annotations, health).

It answers only the endpoints traintel uses, with the documented status codes and bodies, keeps
what it was given, and checks every request: method and path, the ``Authorization: Bearer``
header (401 ``Invalid API key`` otherwise, as Grafana answers), ``Content-Type: application/json``
on bodies, and each body's shape (required keys and their types). What it found wrong is in
``violations``; every request is in ``requests``.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: (method, path pattern) -> required body keys and their types (None: no body)
ROUTES: dict[tuple[str, str], dict[str, type | tuple[type, ...]] | None] = {
    ("GET", r"/api/health"): None,
    ("GET", r"/api/folders/(?P<uid>[\w-]+)"): None,
    ("POST", r"/api/folders"): {"title": str, "uid": str},
    ("GET", r"/api/datasources/uid/(?P<uid>[\w-]+)"): None,
    ("POST", r"/api/datasources"): {
        "name": str,
        "type": str,
        "access": str,
        "url": str,
        "uid": str,
        "jsonData": dict,
    },
    ("PUT", r"/api/datasources/uid/(?P<uid>[\w-]+)"): {
        "name": str,
        "type": str,
        "access": str,
        "url": str,
        "jsonData": dict,
    },
    ("GET", r"/api/dashboards/uid/(?P<uid>[\w-]+)"): None,
    ("POST", r"/api/dashboards/db"): {"dashboard": dict, "folderUid": str, "overwrite": bool},
    ("POST", r"/api/annotations"): {"time": int, "tags": list, "text": str},
}


@dataclass
class GrafanaStandIn:
    token: str
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    folders: dict[str, dict] = field(default_factory=dict)
    datasources: dict[str, dict] = field(default_factory=dict)
    dashboards: dict[str, dict] = field(default_factory=dict)
    annotations: list[dict] = field(default_factory=list)
    #: while cleared, annotation requests wait (a slow Grafana)
    annotations_open: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.annotations_open.set()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

            def do_PUT(self) -> None:
                standin._handle(self, "PUT")

            def do_DELETE(self) -> None:
                standin._handle(self, "DELETE")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _ in self.requests if method != "GET"]

    # -- the API ----------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?", 1)[0]
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        body = None
        if raw:
            if not (request.headers.get("Content-Type") or "").startswith("application/json"):
                self.violations.append(f"{method} {path}: body without Content-Type JSON")
            try:
                body = json.loads(raw)
            except ValueError:
                self.violations.append(f"{method} {path}: body is not JSON")
        self.requests.append((method, path, body))
        route = next(((m, p) for m, p in ROUTES if m == method and re.fullmatch(p, path)), None)
        if route is None:
            self.violations.append(f"{method} {path}: no such endpoint in the API traintel uses")
            return self._send(request, 404, {"message": "Not found"})
        if path != "/api/health" and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(
                request,
                401,
                {
                    "message": "Invalid API key",
                    "messageId": "api-key.invalid",
                    "statusCode": 401,
                    "traceID": "",
                },
            )
        shape = ROUTES[route]
        if shape is None and body is not None:
            self.violations.append(f"{method} {path}: a body where none belongs")
        for key, kind in (shape or {}).items():
            if (
                not isinstance(body, dict)
                or not isinstance(body.get(key), kind)
                or isinstance(body.get(key), bool)
                and kind is int
            ):
                self.violations.append(
                    f"{method} {path}: {key} must be {kind}, body {body!r}"[:300]
                )
        uid = re.fullmatch(route[1], path).groupdict().get("uid")  # type: ignore[union-attr]
        handler = getattr(self, "_" + route[1].split("/")[2] + "_" + method.lower())
        code, answer = handler(uid, body or {})
        self._send(request, code, answer)

    def _health_get(self, uid: None, body: dict) -> tuple[int, dict]:
        return 200, {"commit": "standin", "database": "ok", "version": "13.2.0"}

    def _folders_get(self, uid: str, body: dict) -> tuple[int, dict]:
        if uid not in self.folders:
            return 404, {"message": "folder not found", "status": "not-found"}
        return 200, self.folders[uid]

    def _folders_post(self, uid: None, body: dict) -> tuple[int, dict]:
        if body["uid"] in self.folders:
            return 409, {"message": "a folder with the same uid already exists"}
        folder = {
            "id": len(self.folders) + 1,
            "uid": body["uid"],
            "title": body["title"],
            "url": f"/dashboards/f/{body['uid']}/",
            "version": 1,
        }
        self.folders[body["uid"]] = folder
        return 200, folder

    def _datasources_get(self, uid: str, body: dict) -> tuple[int, dict]:
        if uid not in self.datasources:
            return 404, {"message": "Data source not found"}
        return 200, self.datasources[uid]

    def _datasources_post(self, uid: None, body: dict) -> tuple[int, dict]:
        if any(d["name"] == body["name"] for d in self.datasources.values()):
            return 409, {"message": "data source with the same name already exists"}
        stored = {
            "id": len(self.datasources) + 1,
            "orgId": 1,
            "readOnly": False,
            "isDefault": False,
            "version": 1,
            **body,
        }
        self.datasources[body["uid"]] = stored
        return 200, {
            "datasource": stored,
            "id": stored["id"],
            "message": "Datasource added",
            "name": body["name"],
        }

    def _datasources_put(self, uid: str, body: dict) -> tuple[int, dict]:
        if uid not in self.datasources:
            return 404, {"message": "Data source not found"}
        stored = self.datasources[uid] = {
            **self.datasources[uid],
            **body,
            "version": self.datasources[uid]["version"] + 1,
        }
        return 200, {
            "datasource": stored,
            "id": stored["id"],
            "message": "Datasource updated",
            "name": stored["name"],
        }

    def _dashboards_get(self, uid: str, body: dict) -> tuple[int, dict]:
        if uid not in self.dashboards:
            return 404, {"message": "Dashboard not found"}
        return 200, self.dashboards[uid]

    def _dashboards_post(self, uid: None, body: dict) -> tuple[int, dict]:
        dashboard = body["dashboard"]
        if not isinstance(dashboard.get("title"), str) or not dashboard.get("uid"):
            self.violations.append("POST /api/dashboards/db: dashboard needs a title and a uid")
            return 400, {"message": "Dashboard title cannot be empty"}
        if body["folderUid"] not in self.folders:
            return 400, {"message": "folder not found"}
        existing = self.dashboards.get(dashboard["uid"])
        if existing and not body["overwrite"]:
            return 412, {
                "message": "The dashboard has been changed by someone else",
                "status": "version-mismatch",
            }
        version = existing["dashboard"]["version"] + 1 if existing else 1
        stored_id = existing["dashboard"]["id"] if existing else len(self.dashboards) + 1
        self.dashboards[dashboard["uid"]] = {
            "dashboard": {**dashboard, "id": stored_id, "version": version},
            "meta": {
                "folderUid": body["folderUid"],
                "slug": dashboard["uid"],
                "url": f"/d/{dashboard['uid']}",
            },
        }
        return 200, {
            "id": stored_id,
            "uid": dashboard["uid"],
            "url": f"/d/{dashboard['uid']}",
            "status": "success",
            "version": version,
            "slug": dashboard["uid"],
        }

    def _annotations_post(self, uid: None, body: dict) -> tuple[int, dict]:
        self.annotations_open.wait(30)
        if not all(isinstance(tag, str) for tag in body["tags"]):
            self.violations.append(f"POST /api/annotations: tags must be strings: {body['tags']}")
        for key in ("dashboardUID", "panelId", "timeEnd"):  # optional; null or the right type
            if body.get(key) is not None and not isinstance(body[key], (str, int)):
                self.violations.append(f"POST /api/annotations: {key} {body[key]!r}")
        self.annotations.append(body)
        return 200, {"message": "Annotation added", "id": len(self.annotations)}

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, code: int, answer: dict) -> None:
        data = json.dumps(answer).encode()
        request.send_response(code)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
