"""What is firing and pending, without a UI: Prometheus's and Alertmanager's own APIs.

Prometheus (``/api/v1/alerts``) knows every alert that is pending (its ``for:`` not yet over)
or firing; Alertmanager (``/api/v2/alerts``) knows which firing ones it received, whether they
are silenced or inhibited, and which receivers they went to. ``traintel status`` and ``traintel
stack status`` show both, joined on the alert's labels. Standard library only; an unreachable
server is said, never raised.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Alert:
    name: str
    #: "pending" or "firing" (Prometheus's), "suppressed" when Alertmanager silenced or
    #: inhibited it
    state: str
    severity: str
    labels: dict[str, str]
    summary: str
    #: since when (RFC 3339, Prometheus's activeAt)
    since: str = ""
    #: the receivers Alertmanager routed it to (empty: not (yet) at Alertmanager)
    receivers: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Alerts:
    alerts: list[Alert]
    #: what could not be asked, one sentence per server
    problems: list[str]


def active(prometheus: str, alertmanager: str, timeout: float = 2.0) -> Alerts:
    """Every pending and firing alert, firing first, with what Alertmanager did with it."""
    problems = []
    try:
        rules = _get(f"{prometheus.rstrip('/')}/api/v1/alerts", timeout)["data"]["alerts"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        rules = []
        problems.append(f"Prometheus at {prometheus}: {_reason(error)}")
    try:
        received = _get(f"{alertmanager.rstrip('/')}/api/v2/alerts", timeout)
        if not isinstance(received, list):
            raise ValueError("not a list of alerts")
    except (OSError, ValueError, KeyError, TypeError) as error:
        received = []
        problems.append(f"Alertmanager at {alertmanager}: {_reason(error)}")
    unmatched = list(received)
    alerts = []
    for rule in rules:
        labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
        # Alertmanager's copy has Prometheus's external labels too: it holds ours as a subset
        manager = next((a for a in unmatched if _key(labels) <= _key(a.get("labels") or {})), None)
        if manager is not None:
            unmatched.remove(manager)
        alerts.append(
            _alert(
                labels,
                rule.get("state", ""),
                rule.get("annotations") or {},
                rule.get("activeAt", ""),
                manager,
            )
        )
    for manager in unmatched:  # from another Prometheus, or already resolved here
        labels = {str(k): str(v) for k, v in (manager.get("labels") or {}).items()}
        alerts.append(
            _alert(
                labels,
                "firing",
                manager.get("annotations") or {},
                manager.get("startsAt", ""),
                manager,
            )
        )
    order = {"firing": 0, "suppressed": 1, "pending": 2}
    alerts.sort(key=lambda a: (order.get(a.state, 3), a.name, sorted(a.labels.items())))
    return Alerts(alerts, problems)


def lines(found: Alerts) -> list[str]:
    """One line per alert, then the problems: what both commands print."""
    out = []
    for alert in found.alerts:
        where = " ".join(
            f"{k}={alert.labels[k]}" for k in ("project", "run", "rank") if alert.labels.get(k)
        )
        sent = f" -> {', '.join(alert.receivers)}" if alert.receivers else ""
        out.append(
            f"{alert.state:<10} {alert.severity:<8} {alert.name:<28} {where}"
            f"  since {alert.since[:19] or '-'}{sent}: {alert.summary}"
        )
    if not found.alerts and not found.problems:
        out.append("no alert is pending or firing")
    out.extend(f"could not ask {problem}" for problem in found.problems)
    return out


def _alert(
    labels: dict[str, str],
    state: str,
    annotations: dict[str, Any],
    since: str,
    manager: dict[str, Any] | None,
) -> Alert:
    receivers: tuple[str, ...] = ()
    if manager is not None:
        receivers = tuple(str(r.get("name")) for r in manager.get("receivers") or [])
        if (manager.get("status") or {}).get("state") == "suppressed":
            state = "suppressed"
    return Alert(
        name=labels.get("alertname", "?"),
        state=state,
        severity=labels.get("severity", "-"),
        labels=labels,
        summary=str(annotations.get("summary", "")),
        since=str(since),
        receivers=receivers,
    )


def _key(labels: dict[str, Any]) -> set[tuple[str, str]]:
    return {(str(k), str(v)) for k, v in labels.items()}


def _get(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, OSError):
        reason = getattr(error, "reason", None) or error
        return str(getattr(reason, "strerror", None) or reason)
    return f"unexpected answer ({error})"
