"""Run events as Grafana annotations, opt-in (``grafana_annotations=True`` or
``TRAINTEL_GRAFANA_ANNOTATIONS=true``, with ``GRAFANA_URL`` and ``GRAFANA_TOKEN``).

A sink of the run's event pipeline picks the moments worth a mark on a time axis: the run's start
and end (failure included), classified errors, a best evaluation, a checkpoint. The training
thread only appends the line to a bounded queue; a thread of its own posts each as an organisation
annotation tagged ``traintel``, ``project:<p>``, ``run:<id>`` and its kind, which the dashboards
show (their "Grafana annotations" layer). A Grafana that is down or refuses costs nothing but a
warning: the local record stays the source of truth, and at the end of the run what is still
queued gets the run's shutdown time, no more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, TypedDict

from traintel.core import env, extras
from traintel.export.grafana import ANNOTATION_TAG, GrafanaClient, GrafanaError, connect
from traintel.record.format import EventDict

if TYPE_CHECKING:
    from traintel.record.pipeline import Pipeline

log = logging.getLogger("traintel.annotations")

#: annotations a run may queue before the oldest are dropped (Grafana down for a long time)
QUEUE_SIZE = 1000


class Annotation(TypedDict):
    """What :class:`GrafanaAnnotations` posts."""

    time: int  # milliseconds since the epoch
    tags: list[str]
    text: str


def annotation_for(line: EventDict, run_tags: list[str]) -> Annotation | None:
    """The annotation a record line deserves, or None for the lines that are no moment."""
    kind = line.get("type")
    text = ""
    if kind == "run_end":
        status = str(line.get("status"))
        kind, text = (
            "failure" if status == "failed" else "end",
            f"run {status} after {line.get('steps')} steps",
        )
    elif kind == "error":
        text = (
            f"{line.get('severity')} {line.get('error_type')}: {str(line.get('message', ''))[:200]}"
        )
    elif kind == "eval":
        best = [name for name, is_best in dict(line.get("is_best") or {}).items() if is_best]
        if not best:
            return None
        metrics = dict(line.get("metrics") or {})
        kind, text = (
            "best_eval",
            "best " + ", ".join(f"{name}={metrics.get(name)}" for name in best),
        )
    elif kind == "event" and line.get("event") == "checkpoint":
        fields = dict(line.get("fields") or {})
        kind, text = "checkpoint", f"checkpoint {fields.get('path', '')}".strip()
    else:
        return None
    ts = line.get("ts")
    when = float(ts) if isinstance(ts, (int, float)) else time.time()
    return Annotation(time=int(when * 1000), tags=[*run_tags, str(kind)], text=text)


class GrafanaAnnotations:
    """The sink and its posting thread; :meth:`close` flushes within a time bound."""

    def __init__(
        self,
        api: GrafanaClient,
        run_tags: list[str],
        pipeline: Pipeline | None = None,
        timeout: float = 2.0,
    ) -> None:
        self.api = api
        self.run_tags = run_tags
        self.pipeline = pipeline
        self.timeout = timeout
        self.queue: deque[Annotation] = deque(maxlen=QUEUE_SIZE)
        self.posted = 0
        self.failed = 0
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="traintel-grafana", daemon=True)

    @classmethod
    def start(
        cls,
        pipeline: Pipeline,
        project: str,
        run_id: str,
        name: str,
        start_ts: float,
        timeout: float,
    ) -> GrafanaAnnotations | None:
        """The run's sink, posting from now on (its start first), or None and one warning when
        it cannot be; ``timeout``: how long :meth:`stop` may take."""
        url = env.GRAFANA_URL.get()
        try:
            if not url:
                raise GrafanaError("set GRAFANA_URL to the Grafana to annotate")
            api = connect(url)
        except (GrafanaError, extras.MissingExtra) as error:
            log.warning("traintel: Grafana annotations are off: %s", error)
            return None
        sink = cls(api, [ANNOTATION_TAG, f"project:{project}", f"run:{run_id}"], pipeline, timeout)
        sink.queue.append(
            Annotation(
                time=int(start_ts * 1000),
                tags=[*sink.run_tags, "start"],
                text=f"run {name} started",
            )
        )
        pipeline.add_sink(sink)
        sink._thread.start()
        return sink

    def __call__(self, line: EventDict, record: logging.LogRecord) -> None:
        """On the emitting thread (often the training thread): a check and an append."""
        annotation = annotation_for(line, self.run_tags)
        if annotation is not None:
            self.queue.append(annotation)
            self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            while self.queue:
                self._post(self.queue.popleft())
            if self._closing:
                return

    def _post(self, annotation: Annotation) -> None:
        try:
            self.api.annotations.add_annotation(
                time_from=annotation["time"], tags=annotation["tags"], text=annotation["text"]
            )
            self.posted += 1
        except Exception as error:  # Grafana down, refusing, slow: never the run's problem
            self.failed += 1
            if self.failed == 1:
                log.warning(
                    "traintel: Grafana annotation failed (%s); later failures are "
                    "counted, not logged",
                    error,
                )

    def stop(self) -> None:
        """Post what is queued (the run's end included) within the timeout, then stop."""
        if self.pipeline is not None:
            self.pipeline.remove_sink(self)
        self._closing = True
        self._wake.set()
        self._thread.join(self.timeout)
