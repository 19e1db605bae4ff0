"""Prometheus metrics of one service, in a registry the service owns.

Counters and histograms move when something happens (an instance received, a DIMSE status
answered, a series completed, a job segmented, a delivery attempted); the levels (jobs by
state, queue depth, delivery backlog, spool free space) are read at scrape time from the
same snapshot as ``medseg status``. A registry per service, never prometheus_client's
global one, so that several services (tests) each count their own.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from pynetdicom import evt

logger = logging.getLogger(__name__)

# Jobs take seconds (the phantom model) to minutes (a full SAM2-UNet on CPU).
JOB_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)

# pynetdicom's response message classes -> the DIMSE service they answer.
_RESPONSES = {"C_STORE_RSP": "C-STORE", "C_ECHO_RSP": "C-ECHO"}


class _Levels:
    """Gauges read at scrape time from ``snapshot()`` (``collect_status``'s dictionary)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], spool: Path) -> None:
        self.snapshot = snapshot
        self.spool = spool

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily("medseg_spool_free_bytes", "Free space where the spool lives")
        try:
            free.add_metric([], float(shutil.disk_usage(self.spool).free))
        except OSError as exc:  # a vanished share: leave the gauge out, say why
            logger.warning("spool free space unknown: %s", exc)
        else:
            yield free
        try:
            status = self.snapshot()
        except Exception as exc:  # a scrape must not fail because one read failed
            logger.warning("metrics: cannot read the job records: %s", exc)
            return
        jobs = GaugeMetricFamily("medseg_jobs", "Job records by state", labels=["state"])
        for state, count in status["jobs"].items():
            jobs.add_metric([state], count)
        yield jobs
        depth = GaugeMetricFamily("medseg_queue_depth", "Queue messages not yet picked up")
        depth.add_metric([], status["queue_depth"])
        yield depth
        backlog = GaugeMetricFamily(
            "medseg_delivery_backlog",
            "Result files waiting for a destination",
            labels=["destination"],
        )
        for entry in status["destinations"]:
            backlog.add_metric([entry["destination"]], entry["waiting"])
        yield backlog
        series = GaugeMetricFamily("medseg_series", "Series by state", labels=["state"])
        for state, count in status["series"].items():
            series.add_metric([state], count)
        yield series


class ServiceMetrics:
    """The service's counters and histograms, and the hooks that move them."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], spool: Path) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances = Counter(
            "medseg_instances_received", "C-STORE requests received", registry=r
        )
        self.received_bytes = Counter(
            "medseg_received_bytes", "Bytes of C-STORE data sets received", registry=r
        )
        self.dimse = Counter(
            "medseg_dimse_responses",
            "DIMSE responses sent, by service and status code",
            ["service", "status"],
            registry=r,
        )
        self.series = Counter(
            "medseg_series_completed",
            "Series found complete, by outcome (submitted, held, unmatched)",
            ["outcome"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "medseg_job_duration_seconds",
            "Pipeline time of a segmented job",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "medseg_stage_duration_seconds",
            "Pipeline time per stage (load, preprocess, infer, postprocess, write, preview)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.delivery_attempts = Counter(
            "medseg_delivery_attempts",
            "Delivery attempts by destination",
            ["destination"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "medseg_delivery_failures",
            "Failed delivery attempts by destination",
            ["destination"],
            registry=r,
        )
        self.stow = Counter(
            "medseg_stow_instances",
            "STOW-RS parts answered, by status (0x0000 stored, else the failure reason)",
            ["status"],
            registry=r,
        )
        self.stow_bytes = Gauge(
            "medseg_stow_body_bytes",
            "Bytes of STOW-RS request bodies held in memory now (at most web.max_stow_mb)",
            registry=r,
        )
        r.register(_Levels(snapshot, spool))

    # -- hooks ---------------------------------------------------------------------------
    def dimse_received(self, event: Any) -> None:
        """EVT_DIMSE_RECV (pynetdicom's reader thread): count C-STORE requests and bytes."""
        message = event.message
        if type(message).__name__ != "C_STORE_RQ":
            return
        data = getattr(message, "data_set", None)
        if data is not None and hasattr(data, "getbuffer"):
            self.received_bytes.inc(data.getbuffer().nbytes)

    def dimse_sent(self, event: Any) -> None:
        """EVT_DIMSE_SENT: every response we answer, by its status (0xC210 refused ...)."""
        message = event.message
        service = _RESPONSES.get(type(message).__name__)
        if service is None:
            return
        status = int(message.command_set.get("Status", 0) or 0)
        if service == "C-STORE":
            self.instances.inc()
        self.dimse.labels(service, f"0x{status:04X}").inc()

    def watch_listener(self, server: Any) -> None:
        """Bind the DIMSE hooks to a running pynetdicom server (new associations get them)."""
        server.bind(evt.EVT_DIMSE_RECV, self.dimse_received)
        server.bind(evt.EVT_DIMSE_SENT, self.dimse_sent)

    def stow_answered(self, status: int) -> None:
        self.stow.labels(f"0x{status:04X}").inc()

    def series_completed(self, outcome: str) -> None:
        self.series.labels(outcome).inc()

    def job_processed(self, seconds: float, timings: dict[str, float]) -> None:
        self.job_seconds.observe(seconds)
        for stage, value in timings.items():
            if value:
                self.stage_seconds.labels(stage).observe(value)

    def delivery_attempted(self, destination: str, ok: bool) -> None:
        self.delivery_attempts.labels(destination).inc()
        if not ok:
            self.delivery_failures.labels(destination).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
