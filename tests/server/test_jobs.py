"""Job records: one claim wins, expired leases are taken over, attempts are bounded."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from medseg.server.jobs import (
    DELIVERED,
    DELIVERING,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    Delivery,
    Job,
    JobBook,
    job_id_for,
)
from medseg.server.jobstore import SqliteJobStore
from medseg.server.uids import checked_uid


def make_book(tmp_path: Path, lease: float = 60.0, attempts: int = 2) -> JobBook:
    return JobBook(SqliteJobStore(tmp_path / "jobs.db"), lease_seconds=lease, max_attempts=attempts)


def new_job(n: int = 0, deliveries: tuple[Delivery, ...] = ()) -> Job:
    return Job(job_id_for("1.2.3", n), "1.2.3", "1.2", "rule", deliveries=deliveries)


def test_job_id_is_a_deterministic_uid() -> None:
    assert job_id_for("1.2.3", 1) == job_id_for("1.2.3", 1) != job_id_for("1.2.3", 2)
    assert checked_uid(job_id_for("1.2.3", 1), "job id")


def test_create_is_idempotent(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    assert book.create(new_job())
    assert not book.create(new_job())
    assert book.counts()[QUEUED] == 1


def test_only_one_claim_wins_until_the_lease_expires(tmp_path: Path) -> None:
    book = make_book(tmp_path, lease=60)
    job = new_job()
    book.create(job)
    first = book.claim(job.id, "a")
    assert first is not None and first.state == RUNNING and first.attempts == 1
    assert book.claim(job.id, "b") is None
    later = time.time() + 61
    taken = book.claim(job.id, "b", now=later)
    assert taken is not None and taken.owner == "b" and taken.attempts == 2
    assert not book.heartbeat(job.id, "a"), "the old owner lost its lease"
    assert book.processed(job.id, "a", output="x") is None, "the old owner cannot finish"


def test_attempts_are_bounded_then_failed_with_error(tmp_path: Path) -> None:
    book = make_book(tmp_path, lease=1, attempts=2)
    job = new_job()
    book.create(job)
    now = time.time()
    assert book.claim(job.id, "a", now=now)
    assert book.claim(job.id, "b", now=now + 2)
    assert book.claim(job.id, "c", now=now + 4) is None
    record = book.store.get(job.id)
    assert record.state == FAILED and "gave up after 2 attempt(s)" in record.error


def test_failure_with_retry_requeues_then_fails_for_good(tmp_path: Path) -> None:
    book = make_book(tmp_path, attempts=2)
    job = new_job()
    book.create(job)
    book.claim(job.id, "a")
    retry = book.failed(job.id, "a", "boom", retry_in=0)
    assert retry.state == QUEUED and retry.error == "boom"
    book.claim(job.id, "a")
    final = book.failed(job.id, "a", "boom again", retry_in=0)
    assert final.state == FAILED and final.error == "boom again"


def test_release_gives_the_job_back_without_counting_the_attempt(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    job = new_job()
    book.create(job)
    book.claim(job.id, "a")
    released = book.release(job.id, "a")
    assert released.state == QUEUED and released.attempts == 0


def test_stale_finds_expired_leases_and_unclaimed_messages(tmp_path: Path) -> None:
    book = make_book(tmp_path, lease=10)
    running, waiting, fresh = new_job(1), new_job(2), new_job(3)
    for job in (running, waiting, fresh):
        book.create(job)
    book.claim(running.id, "a")
    book.enqueued(fresh.id)
    now = time.time()
    assert {j.id for j in book.stale(now)} == {waiting.id}
    assert {j.id for j in book.stale(now + 11)} == {running.id, waiting.id, fresh.id}
    assert {j.id for j in book.stale(now, all_queued=True)} == {waiting.id, fresh.id}


def test_deliveries_complete_the_job(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    dests = (Delivery("a", "A", "h", 1), Delivery("b", "B", "h", 2))
    job = new_job(deliveries=dests)
    book.create(job)
    book.claim(job.id, "w")
    assert book.processed(job.id, "w", output="seg.dcm").state == DELIVERING
    mark = lambda d: dataclasses.replace(d, state=DELIVERED)  # noqa: E731
    assert book.update_delivery(job.id, "a", mark).state == DELIVERING
    assert book.update_delivery(job.id, "b", mark).state == DONE


def test_job_without_destinations_is_done_when_processed(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    job = new_job()
    book.create(job)
    book.claim(job.id, "w")
    assert book.processed(job.id, "w", output="seg.dcm").state == DONE


@pytest.mark.parametrize("field", ["state", "attempts", "deliveries"])
def test_record_round_trips_through_json(field: str) -> None:
    job = new_job(deliveries=(Delivery("a", "A", "h", 1, attempts=3),))
    job = dataclasses.replace(job, state=RUNNING, attempts=2)
    assert getattr(Job.from_json(job.to_json()), field) == getattr(job, field)
