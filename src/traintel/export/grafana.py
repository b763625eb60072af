"""Pushing traintel's dashboards and the data sources they need into a running Grafana.

Platform teams already run Grafana; the provisioning files only help those who start the stack's
own. ``traintel grafana push --url URL`` (the token in ``GRAFANA_TOKEN``, never on the command
line) does, with grafana-client and Grafana's HTTP API:

1. a folder for the dashboards (uid ``traintel``), made if missing;
2. every data source the dashboards refer to, and those their links lead to (Prometheus, Loki,
   Tempo), by the uids the dashboards use, made or updated to the URLs given;
3. each dashboard, imported into the folder, unless Grafana already has the same one there.

It is idempotent: a second push sends only reads. Grafana 13 keeps the ``/api`` routes that
grafana-client speaks (deprecated in favour of ``/apis``, "not being disabled").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from traintel.core import env, extras
from traintel.version import __version__

#: a grafana-client ``GrafanaApi`` (the library is not annotated: its calls are typed Any)
GrafanaClient = Any

FOLDER_UID = "traintel"
FOLDER_TITLE = "traintel"
#: Grafana's own annotation store, which the dashboards show by the tag ``traintel``
ANNOTATION_TAG = "traintel"
#: fields of a stored dashboard that Grafana sets itself (left out when comparing)
_GRAFANA_OWNED = ("id", "version")


class GrafanaError(Exception):
    """Grafana refused or could not be reached; the message says what to check."""


def connect(url: str, token: str | None = None, timeout: float = 10.0) -> GrafanaClient:
    """A grafana-client API for ``url`` with the service-account token ``token`` (default
    ``GRAFANA_TOKEN``)."""
    extras.require("traintel's Grafana support", "grafana")
    from grafana_client.api import GrafanaApi

    token = token or env.GRAFANA_TOKEN.get()
    if not token:
        raise GrafanaError(
            "set GRAFANA_TOKEN to a Grafana service account token (Editor role "
            "for dashboards and annotations, Admin for data sources); it is read "
            "from the environment, never from the command line"
        )
    return GrafanaApi.from_url(url, credential=token, timeout=timeout)


@dataclass
class PushResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def datasources_needed(
    dashboards: Mapping[str, Mapping[str, Any]], provisioned: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The provisioned data sources that the dashboards refer to, and those their links lead
    to (exemplars and derived fields to Tempo, Tempo's logs to Loki), in provisioning order."""
    by_uid = {source["uid"]: source for source in provisioned}
    wanted = {
        found["uid"]
        for found in _dicts(dashboards, "datasource")
        if isinstance(found, dict) and found.get("uid") in by_uid
    }
    while True:
        linked = {
            uid
            for source in wanted
            for uid in _dicts(by_uid[source], "datasourceUid")
            if uid in by_uid
        }
        if linked <= wanted:
            return [source for source in provisioned if source["uid"] in wanted]
        wanted |= linked


def _dicts(value: Any, key: str) -> list[Any]:
    """Every value under ``key`` anywhere in nested dicts and lists."""
    if isinstance(value, Mapping):
        return [
            *([value[key]] if key in value else []),
            *(found for item in value.values() for found in _dicts(item, key)),
        ]
    if isinstance(value, list):
        return [found for item in value for found in _dicts(item, key)]
    return []


def datasource_body(source: Mapping[str, Any], url: str) -> dict[str, Any]:
    """A provisioned data source as Grafana's API takes it: named ``traintel <Name>``, at ``url``,
    never the default one of someone else's Grafana; provisioning's ``$$`` is a literal ``$``."""
    body = {
        "uid": source["uid"],
        "name": f"traintel {source['name']}",
        "type": source["type"],
        "access": source.get("access", "proxy"),
        "url": url,
        "basicAuth": False,
        "jsonData": source.get("jsonData") or {},
    }
    unescaped: dict[str, Any] = json.loads(json.dumps(body).replace("$$", "$"))
    return unescaped


def push(
    api: GrafanaClient,
    dashboards: Mapping[str, Mapping[str, Any]],
    datasources: list[dict[str, Any]],
    say: Callable[[str], None] = lambda _: None,
) -> PushResult:
    """Folder, data sources and dashboards into Grafana, changing only what differs."""
    result = PushResult()

    def done(outcome: list[str], what: str, verb: str = "") -> None:
        outcome.append(what)
        if verb:
            say(f"{verb} {what}")

    folder = f"folder {FOLDER_TITLE}"
    if _found(api.folder.get_folder, FOLDER_UID) is None:
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        done(result.created, folder, "created")
    else:
        done(result.unchanged, folder)
    for body in datasources:
        what = f"data source {body['name']} ({body['url']})"
        existing = _found(api.datasource.get_datasource_by_uid, body["uid"])
        if existing is None:
            api.datasource.create_datasource(body)
            done(result.created, what, "created")
        elif all(existing.get(key) == value for key, value in body.items()):
            done(result.unchanged, what)
        else:
            api.datasource.update_datasource_by_uid(body["uid"], body)
            done(result.updated, what, "updated")
    for name, dashboard in dashboards.items():
        what = f"dashboard {dashboard['title']}"
        stored = _found(api.dashboard.get_dashboard, dashboard["uid"])
        if (
            stored is not None
            and _same(stored.get("dashboard") or {}, dashboard)
            and (stored.get("meta") or {}).get("folderUid") == FOLDER_UID
        ):
            done(result.unchanged, what)
            continue
        api.dashboard.update_dashboard(
            {
                "dashboard": {**dashboard, "id": None},
                "folderUid": FOLDER_UID,
                "overwrite": True,
                "message": f"traintel {__version__}: {name}",
            }
        )
        if stored is None:
            done(result.created, what, "imported")
        else:
            done(result.updated, what, "updated")
    return result


def _found(get: Callable[[str], Any], uid: str) -> Any:
    """What Grafana has under ``uid``, or None where it answers 404 (other errors propagate)."""
    from grafana_client.client import GrafanaClientError

    try:
        return get(uid)
    except GrafanaClientError as error:
        if error.status_code == 404:
            return None
        raise


def _same(stored: Mapping[str, Any], ours: Mapping[str, Any]) -> bool:
    def clean(dashboard: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in dashboard.items() if k not in _GRAFANA_OWNED}

    return clean(stored) == clean(ours)


def load_dashboards(directory: Path) -> dict[str, dict[str, Any]]:
    """The dashboards' JSON files (``grafana/dashboards/*.json``) by file stem."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def load_datasources(path: Path) -> list[dict[str, Any]]:
    """The provisioned data sources (``grafana/provisioning/datasources/datasources.yaml``)."""
    return list((yaml.safe_load(path.read_text()) or {}).get("datasources") or [])
