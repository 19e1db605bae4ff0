"""The two places job records can live, behind ``jobs.JobStore``.

- ``SqliteJobStore``: the embedded default, a table in the spool's ``medseg.db``.
- ``RedisJobStore``: for workers on other machines; each record is one Redis string
  (JSON) and the ids are in one set. Compare-and-swap uses WATCH/MULTI.

Both keep the whole record as JSON with the version beside it, so the life-cycle logic
(``jobs.JobBook``) is written once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from medseg.errors import ConfigError
from medseg.server.jobs import STATES, Job
from medseg.server.sqlite import PerThread, transaction

logger = logging.getLogger(__name__)

# What a record that does not parse raises: bad JSON, a missing or unknown field (a record
# written by another medseg version), a value of the wrong type.
UNREADABLE = (ValueError, TypeError, KeyError, AttributeError)


def parse_records(rows: Iterable[tuple[str, str | bytes]], warned: set[str]) -> list[Job]:
    """The records that parse; each one that does not is logged once and left out.

    One unreadable record must not hide every other job from the sweep, the sender and
    ``medseg status`` (``unreadable()`` lists them).
    """
    jobs: list[Job] = []
    for job_id, body in rows:
        try:
            jobs.append(Job.from_json(body))
        except UNREADABLE as exc:
            if job_id not in warned:
                warned.add(job_id)
                logger.error("job record %s is unreadable, left out: %s", job_id, exc)
    return jobs


def unreadable_records(rows: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """(job id, reason) of every record that does not parse."""
    found: list[tuple[str, str]] = []
    for job_id, body in rows:
        try:
            Job.from_json(body)
        except UNREADABLE as exc:
            found.append((job_id, " ".join(str(exc).split()) or type(exc).__name__))
    return found


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


class SqliteJobStore:
    """Job records in SQLite (WAL, synchronous=FULL): one connection per thread."""

    def __init__(self, database: Path) -> None:
        self.database = Path(database)
        self._conn = PerThread(self.database)
        self._conn().executescript(_SCHEMA)
        self._warned: set[str] = set()

    def add(self, job: Job) -> bool:
        with transaction(self._conn()) as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO jobs (id, state, version, updated, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (job.id, job.state, job.version, job.updated, job.to_json()),
            )
            return cursor.rowcount == 1

    def get(self, job_id: str) -> Job | None:
        row = self._conn().execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_json(row[0]) if row else None

    def swap(self, old: Job, new: Job) -> bool:
        with transaction(self._conn()) as conn:
            cursor = conn.execute(
                "UPDATE jobs SET state = ?, version = ?, updated = ?, body = ?"
                " WHERE id = ? AND version = ?",
                (new.state, new.version, new.updated, new.to_json(), old.id, old.version),
            )
            return cursor.rowcount == 1

    def jobs(self, states: tuple[str, ...] = STATES) -> list[Job]:
        marks = ",".join("?" * len(states))
        rows = self._conn().execute(
            f"SELECT id, body FROM jobs WHERE state IN ({marks}) ORDER BY updated", states
        )
        return parse_records(((row[0], row[1]) for row in rows), self._warned)

    def unreadable(self) -> list[tuple[str, str]]:
        rows = self._conn().execute("SELECT id, body FROM jobs ORDER BY updated")
        return unreadable_records((row[0], row[1]) for row in rows)

    def delete(self, job_id: str) -> None:
        with transaction(self._conn()) as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def close(self) -> None:
        self._conn.close()


class RedisJobStore:
    """Job records in Redis, shared by the listener and workers on other machines."""

    def __init__(self, url: str, name: str) -> None:
        try:
            import redis
        except ModuleNotFoundError as exc:
            raise ConfigError("queue.backend = 'redis' needs the redis package") from exc
        self._redis = redis
        self.client = redis.Redis.from_url(url)
        self.prefix = f"medseg:{name}:"
        self.ids_key = self.prefix + "jobs"
        self._warned: set[str] = set()

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def add(self, job: Job) -> bool:
        added = bool(self.client.set(self._key(job.id), job.to_json(), nx=True))
        if added:
            self.client.sadd(self.ids_key, job.id)
        return added

    def get(self, job_id: str) -> Job | None:
        body = self.client.get(self._key(job_id))
        return Job.from_json(body) if body else None

    def swap(self, old: Job, new: Job) -> bool:
        key = self._key(old.id)
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(key)
                body = pipe.get(key)
                if body is None or Job.from_json(body).version != old.version:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(key, new.to_json())
                pipe.execute()
                return True
            except self._redis.WatchError:
                return False

    def _bodies(self) -> list[tuple[str, bytes]]:
        ids = sorted(i.decode() for i in self.client.smembers(self.ids_key))
        bodies = self.client.mget([self._key(i) for i in ids]) if ids else []
        return [(i, b) for i, b in zip(ids, bodies, strict=True) if b]

    def jobs(self, states: tuple[str, ...] = STATES) -> list[Job]:
        found = parse_records(self._bodies(), self._warned)
        return sorted((j for j in found if j.state in states), key=lambda j: j.updated)

    def unreadable(self) -> list[tuple[str, str]]:
        return unreadable_records(self._bodies())

    def delete(self, job_id: str) -> None:
        self.client.delete(self._key(job_id))
        self.client.srem(self.ids_key, job_id)

    def close(self) -> None:
        self.client.close()
