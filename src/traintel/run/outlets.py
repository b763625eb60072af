"""The run's optional outlets beside the record and OTLP, each started only when asked for (and
its modules imported only then): the HTTP endpoint (the live page, /metrics, /status, /events),
Grafana annotations of the run's events, and TensorBoard event files written as the run goes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from traintel.export.annotations import GrafanaAnnotations
    from traintel.export.server import ServedRun, StatusServer
    from traintel.export.tensorboard import LiveWriter
    from traintel.run.identity import RunIdentity
    from traintel.run.settings import Settings


@dataclass
class Outlets:
    server: StatusServer | None = None
    annotations: GrafanaAnnotations | None = None
    tensorboard: LiveWriter | None = None

    @classmethod
    def start(
        cls, run: ServedRun, identity: RunIdentity, settings: Settings, start_ts: float
    ) -> Outlets:
        outlets = cls()
        if settings.http_port is not None:
            from traintel.export.server import StatusServer

            outlets.server = StatusServer(run, settings.http_host, settings.http_port).start()
        if settings.grafana_annotations:
            from traintel.export.annotations import GrafanaAnnotations

            outlets.annotations = GrafanaAnnotations.start(
                run.pipeline,
                identity.project,
                identity.id,
                identity.name,
                start_ts,
                settings.shutdown_timeout,
            )
        if settings.tensorboard:
            from traintel.export.tensorboard import LiveWriter

            outlets.tensorboard = LiveWriter.start(
                run.dir, identity.project, identity.name, identity.id
            )
        return outlets

    def stop(self) -> None:
        """After the run's last line: the annotations post it, the endpoint ends its streams."""
        if self.annotations is not None:
            self.annotations.stop()
        if self.tensorboard is not None:
            self.tensorboard.stop()
        if self.server is not None:
            self.server.stop()
