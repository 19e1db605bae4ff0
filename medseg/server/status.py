"""What ``medseg status`` tells an administrator: queue depth, jobs by state, last errors,
per-destination delivery backlog, series by state. Read-only; works while the service runs.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from medseg.errors import ConfigError
from medseg.server.completion import SeriesTracker
from medseg.server.config import ServerConfig
from medseg.server.health import read_reports
from medseg.server.jobs import (
    DELIVERED,
    DELIVERING,
    FAILED,
    PENDING,
    RUNNING,
    STATES,
    UNDELIVERABLE,
)
from medseg.server.markjobs import mark_status
from medseg.server.queue import JobQueue
from medseg.server.retrieve import retrieval_status
from medseg.server.service import open_spool, open_store
from medseg.server.spool import DATABASE_NAME


def collect_status(config: ServerConfig, *, errors: int = 5) -> dict[str, Any]:
    """A JSON-ready snapshot of the service's state (UIDs, never patient identifiers).

    Read-only: a spool that does not exist yet is reported as an error, not created, so a
    mistyped ``-c`` never leaves an empty spool and database behind.
    """
    database = config.spool_dir / DATABASE_NAME
    if config.queue.backend != "redis" and not database.is_file():
        raise ConfigError(
            f"no spool database at {database}: 'medseg serve' has not run with this "
            "configuration (check -c and [storage] spool)"
        )
    spool = open_spool(config)
    store = open_store(config, spool)
    try:
        jobs = store.jobs()
        unreadable = store.unreadable()
    finally:
        store.close()
    now = time.time()
    # Only a job that has its SEG (state delivering) has something waiting to be sent: the
    # pending deliveries of a queued or failed job are not a destination's backlog.
    destinations: dict[str, dict[str, Any]] = {}
    for job in jobs:
        for d in job.deliveries:
            label = f"{d.name} ({d.ae_title}@{d.host}:{d.port})"
            entry = destinations.setdefault(
                label,
                {"destination": label, "waiting": 0, "undeliverable": 0, "delivered": 0},
            )
            if d.state == PENDING and job.state == DELIVERING:
                entry["waiting"] += 1
                # waiting since the SEG was written, not since the last attempt
                waiting = now - (job.delivering_since or job.created)
                entry["oldest_seconds"] = max(entry.get("oldest_seconds", 0.0), waiting)
                retry = max(0.0, d.next_attempt - now)
                entry["next_try_seconds"] = min(entry.get("next_try_seconds", retry), retry)
                if d.error:
                    entry["last_error"] = d.error
            elif d.state == UNDELIVERABLE:
                entry["undeliverable"] += 1
                entry["last_error"] = d.error
            elif d.state == DELIVERED:
                entry["delivered"] += 1
    with_errors = sorted((j for j in jobs if j.error), key=lambda j: j.updated, reverse=True)
    delivery_errors = sorted(
        (
            {
                "job": j.id,
                "series": j.series_uid,
                "destination": d.name,
                "state": d.state,
                "attempts": d.attempts,
                "error": d.error,
                "time": j.updated,
            }
            for j in jobs
            for d in j.deliveries
            if d.error and d.state != DELIVERED
        ),
        key=lambda e: e["time"],
        reverse=True,
    )
    series = SeriesTracker(spool.database).counts() if spool.database.is_file() else {}
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spool": str(spool.root),
        "queue_backend": config.queue.backend,
        "queue_depth": JobQueue(config.queue, spool.root).depth(),
        "jobs": {state: sum(1 for j in jobs if j.state == state) for state in STATES},
        "series": series,
        "delivery_backlog": {k: v["waiting"] for k, v in destinations.items() if v["waiting"]},
        "undeliverable": {
            k: v["undeliverable"] for k, v in destinations.items() if v["undeliverable"]
        },
        "destinations": list(destinations.values()),
        "last_errors": [
            {
                "job": j.id,
                "series": j.series_uid,
                "rule": j.rule,
                "state": j.state,
                "attempts": j.attempts,
                "error": j.error,
                "time": j.updated,
            }
            for j in with_errors[:errors]
        ],
        "delivery_errors": delivery_errors[:errors],
        "failed": sum(1 for j in jobs if j.state == FAILED),
        "marks": mark_status(spool.database, errors),
        "unreadable_jobs": [{"job": job_id, "error": reason} for job_id, reason in unreadable],
        "housekeeping": [_report(r, now) for r in read_reports(spool.root)],
        "disk": _disk(spool.root, config.storage.min_free_mb),
        "retrieve": retrieval_status(spool.database, config.retrieve, errors),
    }


def _report(report: dict[str, Any], now: float) -> dict[str, Any]:
    """A process's health report with its age (how long since it last wrote one)."""
    return {**report, "age_seconds": max(0.0, now - float(report.get("time", now)))}


def _disk(root: Any, reserve_mb: float) -> dict[str, Any]:
    """Free space where the spool (and the embedded job database) lives."""
    try:
        free_mb = shutil.disk_usage(root).free / 2**20
    except OSError as exc:
        return {"error": str(exc), "reserve_mb": reserve_mb, "low": True}
    return {"free_mb": round(free_mb, 1), "reserve_mb": reserve_mb, "low": free_mb < reserve_mb}


def collect_jobs(config: ServerConfig, *, limit: int = 200) -> list[dict[str, Any]]:
    """The newest ``limit`` job records with their series as the listener saw it
    (description, modality, instances): the job table of the web dashboard and ``/api/``.

    Read-only, like ``collect_status``; UIDs, never patient identifiers.
    """
    spool = open_spool(config)
    store = open_store(config, spool)
    try:
        jobs = sorted(store.jobs(), key=lambda j: j.created, reverse=True)[:limit]
    finally:
        store.close()
    tracker = SeriesTracker(spool.database) if spool.database.is_file() else None
    rows = []
    for job in jobs:
        series = tracker.get(job.series_uid) if tracker is not None else None
        rows.append(
            {
                "id": job.id,
                "state": job.state,
                "rule": job.rule,
                "study": job.study_uid,
                "series": job.series_uid,
                "series_description": series.description if series else "",
                "modality": series.modality if series else "",
                "instances": series.received if series else 0,
                "slices": job.slices,
                "mark": job.mark_uid,
                "attempts": job.attempts,
                "error": job.error,
                "created": job.created,
                "updated": job.updated,
                "seconds": job.seconds,
                "timings": dict(job.timings),
                "volume_ml": job.volume_ml,
                "seg_uid": job.seg_uid,
                "report_uid": job.report_uid,
                "deliveries": [
                    {
                        "destination": d.name,
                        "address": f"{d.ae_title}@{d.host}:{d.port}",
                        "file": d.file,
                        "state": d.state,
                        "attempts": d.attempts,
                        "next_attempt": d.next_attempt,
                        "error": d.error,
                    }
                    for d in job.deliveries
                ],
            }
        )
    return rows


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _clock(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _health_lines(report: dict[str, Any]) -> list[str]:
    """One line per process that reports, then one per problem it has."""
    who = f"{report.get('role', '?')} (pid {report.get('pid', '?')} on {report.get('host', '?')})"
    problems = report.get("problems", [])
    if report.get("running") is False:
        state = "NOT RUNNING (its last report follows)" if problems else "not running"
    else:
        state = f"{len(problems)} PROBLEM(S)" if problems else "ok"
    lines = [f"health       {who}: {state}, reported {_ago(report['age_seconds'])} ago"]
    for p in problems:
        lines.append(
            f"  {p['what']}: failing since {_clock(p['since'])} ({p['count']} time(s), "
            f"last {_clock(p['last'])}): {p['error']}"
        )
    if report.get("more_problems"):
        lines.append(f"  ... and {report['more_problems']} more (see the log)")
    return lines


def format_status(status: dict[str, Any]) -> str:
    """The snapshot as short labelled lines for a terminal: the states that matter first."""
    jobs = status["jobs"]
    lines = [
        f"medseg status at {status['time']}",
        f"spool        {status['spool']}",
        f"queue        {status['queue_backend']}: {status['queue_depth']} message(s) waiting, "
        f"{jobs.get(RUNNING, 0)} job(s) running",
        "jobs         " + ", ".join(f"{k} {v}" for k, v in jobs.items()),
        "series       " + (", ".join(f"{k} {v}" for k, v in status["series"].items()) or "none"),
    ]
    disk = status.get("disk")
    if disk:
        if "error" in disk:
            lines.append(f"disk         spool not usable: {disk['error']}")
        else:
            low = "  LOW: below the reserve, instances are refused" if disk["low"] else ""
            lines.append(
                f"disk         {disk['free_mb']:.0f} MiB free (reserve {disk['reserve_mb']:g} MiB)"
                + low
            )
    for report in status.get("housekeeping", []):
        lines += _health_lines(report)
    unreadable = status.get("unreadable_jobs", [])
    if unreadable:
        lines.append(f"records      {len(unreadable)} unreadable job record(s), left out:")
        lines += [f"  job {u['job']}: {u['error']}" for u in unreadable[:5]]
    destinations = status.get("destinations", [])
    if not destinations:
        lines.append("delivery     no destinations used yet")
    for entry in destinations:
        parts = [f"{entry['waiting']} waiting"]
        if entry["waiting"]:
            parts.append(f"oldest {_ago(entry['oldest_seconds'])}")
            parts.append(f"next try in {_ago(entry['next_try_seconds'])}")
        if entry["undeliverable"]:
            parts.append(f"{entry['undeliverable']} UNDELIVERABLE")
        parts.append(f"{entry['delivered']} delivered")
        lines.append(f"delivery     {entry['destination']}: " + ", ".join(parts))
    if status["last_errors"] or status["delivery_errors"]:
        lines.append("errors       newest first")
    for err in status["last_errors"]:
        lines.append(
            f"  {_clock(err['time'])}  job {err['state']} (rule {err['rule']}, series "
            f"{err['series']}, attempt {err['attempts']}): {err['error']}"
        )
    for err in status["delivery_errors"]:
        lines.append(
            f"  {_clock(err['time'])}  send to {err['destination']} {err['state']} "
            f"(series {err['series']}, attempt {err['attempts']}): {err['error']}"
        )
    lines += _mark_lines(status.get("marks", {}))
    lines += _retrieve_lines(status.get("retrieve", {}))
    return "\n".join(lines)


def _mark_lines(marks: dict[str, Any]) -> list[str]:
    """Mark objects (GSPS, SR) by state, and the newest that made no prompt job and why."""
    counts = marks.get("counts", {})
    if not counts:
        return []
    lines = ["marks        " + ", ".join(f"{k} {v}" for k, v in counts.items())]
    for entry in marks.get("problems", []):
        lines.append(
            f"  {_clock(entry['time'])}  mark {entry['state']} (object {entry['mark']}): "
            f"{entry['detail']}"
        )
    return lines


def _retrieve_lines(retrieve: dict[str, Any]) -> list[str]:
    """Series asked of the PACS for marks, by state, and the newest that failed and why."""
    if not retrieve.get("counts"):
        return []
    counts = ", ".join(f"{k} {v}" for k, v in retrieve["counts"].items())
    lines = [f"retrieve     {retrieve['pacs']}: {counts}"]
    for entry in retrieve.get("problems", []):
        when = (
            f", next try in {_ago(entry['next_try_seconds'])}"
            if entry["next_try_seconds"] is not None
            else ""
        )
        lines.append(
            f"  {_clock(entry['time'])}  retrieval {entry['state']} (series {entry['series']}, "
            f"attempt {entry['attempts']}{when}): {entry['error']}"
        )
    return lines
