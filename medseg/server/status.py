"""What ``medseg status`` tells an administrator: queue depth, jobs by state, last errors,
per-destination delivery backlog, series by state. Read-only; works while the service runs.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from medseg.server.completion import SeriesTracker
from medseg.server.config import ServerConfig
from medseg.server.jobs import FAILED, PENDING, STATES, UNDELIVERABLE
from medseg.server.queue import JobQueue
from medseg.server.service import open_spool, open_store


def collect_status(config: ServerConfig, *, errors: int = 5) -> dict[str, Any]:
    """A JSON-ready snapshot of the service's state (no patient identifiers)."""
    spool = open_spool(config)
    store = open_store(config, spool)
    try:
        jobs = store.jobs()
    finally:
        store.close()
    backlog: Counter[str] = Counter()
    undeliverable: Counter[str] = Counter()
    for job in jobs:
        for d in job.deliveries:
            label = f"{d.name} ({d.ae_title}@{d.host}:{d.port})"
            if d.state == PENDING:
                backlog[label] += 1
            elif d.state == UNDELIVERABLE:
                undeliverable[label] += 1
    with_errors = sorted((j for j in jobs if j.error), key=lambda j: j.updated, reverse=True)
    delivery_errors = [
        {"job": j.id, "destination": d.name, "attempts": d.attempts, "error": d.error}
        for j in jobs
        for d in j.deliveries
        if d.error
    ]
    series = SeriesTracker(spool.database).counts() if spool.database.is_file() else {}
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spool": str(spool.root),
        "queue_backend": config.queue.backend,
        "queue_depth": JobQueue(config.queue, spool.root).depth(),
        "jobs": {state: sum(1 for j in jobs if j.state == state) for state in STATES},
        "series": series,
        "delivery_backlog": dict(backlog),
        "undeliverable": dict(undeliverable),
        "last_errors": [
            {"job": j.id, "series": j.series_uid, "state": j.state, "error": j.error}
            for j in with_errors[:errors]
        ],
        "delivery_errors": delivery_errors[:errors],
        "failed": sum(1 for j in jobs if j.state == FAILED),
    }


def format_status(status: dict[str, Any]) -> str:
    """The snapshot as a few aligned lines for a terminal."""
    lines = [
        f"spool        {status['spool']}",
        f"queue        {status['queue_backend']}, {status['queue_depth']} message(s) waiting",
        "jobs         " + ", ".join(f"{k} {v}" for k, v in status["jobs"].items()),
        "series       " + (", ".join(f"{k} {v}" for k, v in status["series"].items()) or "-"),
    ]
    backlog = status["delivery_backlog"]
    lines.append("backlog      " + (", ".join(f"{k}: {v}" for k, v in backlog.items()) or "none"))
    for label, count in status["undeliverable"].items():
        lines.append(f"undeliverable {label}: {count}")
    for err in status["last_errors"]:
        lines.append(f"error        job {err['job']} ({err['state']}): {err['error']}")
    for err in status["delivery_errors"]:
        lines.append(
            f"send error   job {err['job']} -> {err['destination']} "
            f"(attempt {err['attempts']}): {err['error']}"
        )
    return "\n".join(lines)
