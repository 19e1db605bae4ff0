"""The web side of one running service: its metrics wired to the service's hooks, and the
HTTP server. ``Service.start`` calls ``start_web``; ``Service.stop`` calls ``stop``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.server.ingest import InstanceStore
from medseg.server.jobs import Job
from medseg.server.status import collect_status
from medseg.server.web.app import WebBackend
from medseg.server.web.metrics import ServiceMetrics
from medseg.server.web.server import WebServer
from medseg.server.worker import Outcome, Segmenter

if TYPE_CHECKING:  # pragma: no cover
    from medseg.server.service import Service

logger = logging.getLogger(__name__)


class _TimedSegmenter:
    """The service's segmenter, reporting each job's pipeline times to the metrics."""

    def __init__(self, inner: Segmenter, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def __call__(self, files: list[Path], output: Path, job: Job) -> Outcome:
        outcome = self.inner(files, output, job)
        self.metrics.job_processed(outcome.seconds, outcome.timings)
        return outcome


class WebSide:
    """Metrics plus the HTTP server of a ``Service``."""

    def __init__(self, service: Service) -> None:
        config = service.config
        self.metrics = ServiceMetrics(lambda: collect_status(config), service.spool.root)
        backend = WebBackend(
            config=config,
            spool=service.spool,
            book=service.book,
            enqueue=service.enqueue,
            wake=service.wake,
            metrics=self.metrics,
            instances=(
                InstanceStore(service.spool, service.tracker, service.inbox)
                if service.tracker is not None
                else None
            ),
        )
        self.server = WebServer(backend)
        if service.tracker is not None:
            service.tracker.on_closed = self.metrics.series_completed
        service.sender.on_attempt = self.metrics.delivery_attempted
        service.runner.segmenter = _TimedSegmenter(service.runner.segmenter, self.metrics)

    @property
    def port(self) -> int:
        return self.server.port

    def watch_listener(self, listener: Any) -> None:
        self.metrics.watch_listener(listener)

    def stop(self) -> None:
        self.server.stop()


def start_web(service: Service) -> WebSide:
    """Wire the metrics into ``service`` and start serving HTTP (``ConfigError`` if the
    port cannot be bound)."""
    side = WebSide(service)
    side.server.start()
    return side
