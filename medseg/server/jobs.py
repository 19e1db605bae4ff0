"""Durable job records: the truth about every job, whatever happens to the queue.

huey is at-most-once (a dequeued task whose process is killed is gone), so the queue only
carries job ids. The record here holds state, attempt count and a *lease* that the running
worker renews by heartbeat; a sweep re-enqueues jobs whose lease expired (the worker died)
or that sit queued with no message (lost). Every change is a compare-and-swap on the
record's version, so two workers that receive the same id never both run it, and running a
duplicate message is harmless.

States: ``queued`` -> ``running`` -> ``delivering`` (results written, waiting in the outbox
for each destination) -> ``done``; ``failed`` keeps its error visible. A job may have several
result files (a prompt job from a reader's marks: the SEG and the measurement report); each
(destination, file) is one delivery with its own state, attempts and error. A job whose
results reached none of its destinations (every one undeliverable) is ``failed``, not
``done``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

QUEUED, RUNNING, DELIVERING, DONE, FAILED = "queued", "running", "delivering", "done", "failed"
STATES = (QUEUED, RUNNING, DELIVERING, DONE, FAILED)
FINAL = (DONE, FAILED)

PENDING, DELIVERED, UNDELIVERABLE = "pending", "delivered", "undeliverable"

# The result files a job leaves in its outbox folder (``Spool.job_dir``).
SEG_FILE = "seg.dcm"
REPORT_FILE = "report.sr.dcm"
PREVIEW_FILE = "preview.png"  # mask outlines over the slices that hold them (dashboard)


@dataclass(frozen=True)
class Delivery:
    """One result file of a job to one destination, resolved to an address when the job is
    created. ``file`` names the file in the job's outbox folder (a record written before
    jobs had several files has none: its SEG)."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    file: str = SEG_FILE
    state: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    error: str = ""

    @property
    def label(self) -> str:
        """The delivery in a log line: its destination, and the file unless it is the SEG."""
        return self.name if self.file == SEG_FILE else f"{self.name} ({self.file})"


@dataclass(frozen=True)
class Job:
    """One series to segment and deliver. ``version`` increases with every stored change."""

    id: str
    series_uid: str
    study_uid: str
    rule: str
    model: str = ""
    window: str = ""
    threshold: float | None = None  # None: the model card's
    prompts: tuple[str, ...] = ()  # the rule's prompt texts (see ruleprompts.py)
    output_folder: str = ""
    mark_uid: str = ""  # a prompt job: the SOP Instance UID of the reader's mark object
    mark_file: str = ""  # ... and where the spool keeps it
    state: str = QUEUED
    attempts: int = 0
    lease_until: float = 0.0
    owner: str = ""
    error: str = ""
    created: float = 0.0
    updated: float = 0.0
    not_before: float = 0.0
    enqueued: float = 0.0
    delivering_since: float = 0.0  # when the SEG was written and deliveries began to wait
    output: str = ""
    seg_uid: str = ""
    report_uid: str = ""  # the measurement report's SOP Instance UID (prompt jobs)
    slices: int = 0
    volume_ml: float = 0.0
    seconds: float = 0.0
    timings: tuple[tuple[str, float], ...] = ()  # pipeline stage -> seconds (load, infer...)
    deliveries: tuple[Delivery, ...] = ()
    version: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        data: dict[str, Any] = json.loads(text)
        data["deliveries"] = tuple(Delivery(**d) for d in data.get("deliveries", ()))
        data["prompts"] = tuple(data.get("prompts", ()))
        data["timings"] = tuple((str(k), float(v)) for k, v in data.get("timings", ()))
        return cls(**data)

    @property
    def pending(self) -> tuple[Delivery, ...]:
        return tuple(d for d in self.deliveries if d.state == PENDING)


def settled(job: Job) -> Job:
    """The state a delivering job's deliveries give it: still ``delivering`` while one is
    pending; ``done`` when the SEG reached a destination; ``failed`` when it reached none
    (each undeliverable), so a SEG that went nowhere is never counted as done."""
    if any(d.state == PENDING for d in job.deliveries):
        return dataclasses.replace(job, state=DELIVERING)
    if job.deliveries and not any(d.state == DELIVERED for d in job.deliveries):
        reasons = "; ".join(f"{d.name}: {d.error}" for d in job.deliveries)
        return dataclasses.replace(job, state=FAILED, error=f"not delivered ({reasons})")
    return dataclasses.replace(job, state=DONE)


def job_id_for(series_uid: str, epoch: int) -> str:
    """A deterministic UID-shaped id: completing the same series epoch twice is one job."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{series_uid}#{epoch}').int}"


def mark_job_id(series_uid: str, mark_uid: str) -> str:
    """The prompt job of one mark object on one series: the same mark received twice is one
    job, another mark object on the same series another job (and result series)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{series_uid}#mark#{mark_uid}').int}"


class JobStore(Protocol):
    """Where job records live: SQLite in the spool (embedded) or Redis (scale-out)."""

    def add(self, job: Job) -> bool:
        """Insert ``job`` unless its id exists; True when inserted."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def swap(self, old: Job, new: Job) -> bool:
        """Replace ``old`` by ``new`` only if the stored version is still ``old.version``."""
        ...

    def jobs(self, states: tuple[str, ...] = STATES) -> list[Job]: ...

    def delete(self, job_id: str) -> None: ...

    def unreadable(self) -> list[tuple[str, str]]:
        """(id, reason) of records that do not parse; ``jobs()`` leaves them out."""
        ...

    def close(self) -> None: ...


class JobBook:
    """The job life cycle on top of a ``JobStore``; every transition is one CAS."""

    def __init__(self, store: JobStore, *, lease_seconds: float, max_attempts: int) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts

    def _update(self, job_id: str, change: Callable[[Job], Job | None]) -> Job | None:
        """Apply ``change`` to the current record until the CAS wins; None if it declines."""
        for _ in range(100):
            current = self.store.get(job_id)
            if current is None:
                return None
            new = change(current)
            if new is None:
                return None
            new = dataclasses.replace(new, version=current.version + 1, updated=time.time())
            if self.store.swap(current, new):
                return new
        raise RuntimeError(f"job {job_id}: record keeps changing under us")  # pragma: no cover

    def create(self, job: Job) -> bool:
        now = time.time()
        return self.store.add(dataclasses.replace(job, created=now, updated=now, version=1))

    def claim(self, job_id: str, owner: str, now: float | None = None) -> Job | None:
        """Take the job for running: it is queued, or running under an expired lease."""

        def change(job: Job) -> Job | None:
            t = time.time() if now is None else now
            runnable = job.state == QUEUED or (job.state == RUNNING and job.lease_until < t)
            if not runnable or job.not_before > t:
                return None
            if job.attempts >= self.max_attempts:
                error = job.error or "worker died while running the job"
                return dataclasses.replace(
                    job,
                    state=FAILED,
                    owner="",
                    error=f"gave up after {job.attempts} attempt(s): {error}",
                )
            return dataclasses.replace(
                job,
                state=RUNNING,
                owner=owner,
                attempts=job.attempts + 1,
                lease_until=t + self.lease_seconds,
            )

        job = self._update(job_id, change)
        return job if job is not None and job.state == RUNNING and job.owner == owner else None

    def heartbeat(self, job_id: str, owner: str) -> bool:
        """Extend the lease; False when the job is no longer ours (expired and taken)."""

        def change(job: Job) -> Job | None:
            if job.state != RUNNING or job.owner != owner:
                return None
            return dataclasses.replace(job, lease_until=time.time() + self.lease_seconds)

        return self._update(job_id, change) is not None

    def processed(self, job_id: str, owner: str, **result: Any) -> Job | None:
        """The SEG is written: on to delivering (or done when nothing is to be sent)."""

        def change(job: Job) -> Job | None:
            if job.state != RUNNING or job.owner != owner:
                return None
            updated = dataclasses.replace(
                job, **result, owner="", lease_until=0.0, error="", delivering_since=time.time()
            )
            return dataclasses.replace(updated, state=DELIVERING if updated.pending else DONE)

        return self._update(job_id, change)

    def failed(self, job_id: str, owner: str, error: str, *, retry_in: float | None) -> Job | None:
        """Record an error: queued again after ``retry_in`` s if attempts remain, else failed."""

        def change(job: Job) -> Job | None:
            if job.state != RUNNING or job.owner != owner:
                return None
            if retry_in is not None and job.attempts < self.max_attempts:
                return dataclasses.replace(
                    job,
                    state=QUEUED,
                    owner="",
                    lease_until=0.0,
                    error=error,
                    not_before=time.time() + retry_in,
                )
            return dataclasses.replace(job, state=FAILED, owner="", lease_until=0.0, error=error)

        return self._update(job_id, change)

    def release(self, job_id: str, owner: str) -> Job | None:
        """Give a running job back (graceful shutdown): queued again, the attempt not counted."""

        def change(job: Job) -> Job | None:
            if job.state != RUNNING or job.owner != owner:
                return None
            return dataclasses.replace(
                job, state=QUEUED, owner="", lease_until=0.0, attempts=max(0, job.attempts - 1)
            )

        return self._update(job_id, change)

    def update_delivery(
        self,
        job_id: str,
        name: str,
        change: Callable[[Delivery], Delivery | None],
        file: str = SEG_FILE,
    ) -> Job | None:
        """Change the delivery of ``file`` to destination ``name`` of a delivering job; the
        job is done when none is pending."""

        def job_change(job: Job) -> Job | None:
            if job.state != DELIVERING:
                return None
            found = next((d for d in job.deliveries if (d.name, d.file) == (name, file)), None)
            if found is None:
                return None
            new = change(found)
            if new is None:
                return None
            deliveries = tuple(new if d is found else d for d in job.deliveries)
            return settled(dataclasses.replace(job, deliveries=deliveries))

        return self._update(job_id, job_change)

    def stale(self, now: float | None = None, *, all_queued: bool = False) -> list[Job]:
        """Jobs to re-enqueue: running with an expired lease, or queued with no live message.

        A queued job's message may have died with a worker (huey deletes it on dequeue), so
        a queued job not claimed within a lease period of its last enqueue is sent again
        (``all_queued``: every queued job, as at start-up); the CAS in ``claim`` makes the
        occasional duplicate message harmless.
        """
        t = time.time() if now is None else now
        return [
            job
            for job in self.store.jobs((QUEUED, RUNNING))
            if (job.state == RUNNING and job.lease_until < t)
            or (
                job.state == QUEUED
                and job.not_before <= t
                and (all_queued or job.enqueued < t - self.lease_seconds)
            )
        ]

    def enqueued(self, job_id: str) -> Job | None:
        """Note that a message for the job was just put on the queue."""
        return self._update(job_id, lambda job: dataclasses.replace(job, enqueued=time.time()))

    # -- an administrator's actions (the dashboard) -----------------------------------------
    def retry(self, job_id: str) -> Job | None:
        """A failed job queued again from scratch (attempts reset); None if not failed."""

        def change(job: Job) -> Job | None:
            if job.state != FAILED:
                return None
            return dataclasses.replace(
                job, state=QUEUED, attempts=0, error="", owner="", lease_until=0.0, not_before=0.0
            )

        return self._update(job_id, change)

    def cancel(self, job_id: str, reason: str) -> Job | None:
        """A queued job failed with ``reason`` before a worker claims it; None if not queued
        (a worker that got there first keeps it: the claim is the same CAS)."""

        def change(job: Job) -> Job | None:
            if job.state != QUEUED:
                return None
            return dataclasses.replace(job, state=FAILED, error=reason, not_before=0.0)

        return self._update(job_id, change)

    def redeliver(self, job_id: str, name: str, file: str = SEG_FILE) -> Job | None:
        """Send a result again to a destination now: an undeliverable delivery (or a pending
        one waiting out its backoff after an error) becomes pending and due, its attempts
        counted anew. Should a send be in flight meanwhile, the peer gets the same SOP
        Instance UID twice (a duplicate, not a second result)."""

        def change(job: Job) -> Job | None:
            if job.state not in (DELIVERING, DONE) or not job.output:
                return None
            found = next((d for d in job.deliveries if (d.name, d.file) == (name, file)), None)
            if found is None or found.state == DELIVERED:
                return None
            if found.state == PENDING and not found.error:  # first try still to come
                return None
            again = dataclasses.replace(found, state=PENDING, attempts=0, next_attempt=0.0)
            deliveries = tuple(again if d is found else d for d in job.deliveries)
            return dataclasses.replace(job, deliveries=deliveries, state=DELIVERING)

        return self._update(job_id, change)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for job in self.store.jobs():
            counts[job.state] += 1
        return counts
