"""``medseg status`` tells the truth about deliveries (issue 23 item 10)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from medseg.server.config import DeliveryConfig
from medseg.server.jobs import (
    DELIVERED,
    DELIVERING,
    DONE,
    FAILED,
    PENDING,
    UNDELIVERABLE,
    Delivery,
    Job,
    JobBook,
    settled,
)
from medseg.server.jobstore import SqliteJobStore
from medseg.server.sender import Sender
from medseg.server.status import collect_status, format_status
from tests.server.peers import CountingReceiver, free_port
from tests.server.records import delivering_job
from tests.server.test_service import write_seg_like

HOUR = 3600.0


def _setup(server_config: Callable, tmp_path: Path) -> tuple:
    _, config = server_config()
    config.spool_dir.mkdir(parents=True)
    store = SqliteJobStore(config.spool_dir / "medseg.db")
    book = JobBook(store, lease_seconds=60, max_attempts=3)
    delivery = DeliveryConfig(initial_backoff_seconds=0.5, max_backoff_seconds=2, timeout_seconds=5)
    write_seg_like(tmp_path / "seg.dcm", "1.2.3")
    return config, store, book, Sender(book, delivery, calling_ae="MEDSEG")


def test_oldest_waiting_counts_from_when_the_seg_was_written_not_the_last_attempt(
    server_config: Callable, tmp_path: Path
) -> None:
    """The SEG has waited an hour; an attempt a moment ago (to a closed port on 127.0.0.1)
    must not reset "oldest" to a second."""
    config, store, book, sender = _setup(server_config, tmp_path)
    try:
        job = delivering_job(book, free_port(), tmp_path / "seg.dcm", "1.2.3.4")
        an_hour_ago = job.delivering_since - HOUR
        aged = dataclasses.replace(
            job, created=an_hour_ago, delivering_since=an_hour_ago, version=job.version + 1
        )
        assert store.swap(job, aged)
        assert not sender.deliver(job.id, "recv", Path(job.output), aged.created)
        after = store.get(job.id)
        assert after.deliveries[0].state == PENDING and after.deliveries[0].attempts == 1
        (entry,) = collect_status(config)["destinations"]
        assert entry["waiting"] == 1
        assert HOUR - 60 < entry["oldest_seconds"] < HOUR + 60
        assert "oldest 60 min" in format_status(collect_status(config))
    finally:
        sender.close()
        store.close()


def test_a_job_whose_only_delivery_is_undeliverable_is_failed_not_done(
    server_config: Callable, tmp_path: Path
) -> None:
    """A real peer refuses the SEG for good (0xC211) until the sender gives up."""
    config, store, book, sender = _setup(server_config, tmp_path)
    try:
        with CountingReceiver(status=0xC211) as receiver:
            job = delivering_job(book, receiver.port, tmp_path / "seg.dcm", "1.2.3.4")
            for _ in range(sender.config.permanent_failure_tries):
                sender.deliver(job.id, "recv", Path(job.output), job.created)
                book.update_delivery(
                    job.id, "recv", lambda d: dataclasses.replace(d, next_attempt=0.0)
                )
        record = store.get(job.id)
        assert record.deliveries[0].state == UNDELIVERABLE
        assert record.state == FAILED and "not delivered" in record.error
        snapshot = collect_status(config)
        assert snapshot["jobs"][DONE] == 0 and snapshot["jobs"][FAILED] == 1
        assert sum(snapshot["undeliverable"].values()) == 1
        text = format_status(snapshot)
        assert "1 UNDELIVERABLE" in text and "0xC211" in text
    finally:
        sender.close()
        store.close()


def test_a_seg_that_reached_one_destination_of_two_is_done() -> None:
    both = (
        Delivery("a", "A", "127.0.0.1", 1, state=DELIVERED),
        Delivery("b", "B", "127.0.0.1", 2, state=UNDELIVERABLE, error="refused"),
    )
    job = Job("2.25.1", "1.2", "1.3", "all", state=DELIVERING, deliveries=both)
    assert settled(job).state == DONE
    pending = dataclasses.replace(both[1], state=PENDING)
    assert settled(dataclasses.replace(job, deliveries=(both[0], pending))).state == DELIVERING
