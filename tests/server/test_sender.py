"""The outbox: of several senders that saw the same pending delivery, exactly one sends."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pydicom
import pytest

from medseg.server.config import DeliveryConfig
from medseg.server.jobs import (
    DELIVERING,
    DONE,
    PENDING,
    UNDELIVERABLE,
    Delivery,
    Job,
    JobBook,
    job_id_for,
)
from medseg.server.jobstore import SqliteJobStore
from medseg.server.sender import Sender
from tests.server.peers import CountingReceiver
from tests.server.records import delivering_job
from tests.server.test_service import write_seg_like


def book(database: Path) -> JobBook:
    """One process's view of the shared job records (its own connection)."""
    return JobBook(SqliteJobStore(database), lease_seconds=60, max_attempts=3)


def test_two_senders_racing_on_one_delivery_send_once(tmp_path: Path) -> None:
    """Sender B read the job list before A claimed, and tries while A is mid-send."""
    database = tmp_path / "medseg.db"
    config = DeliveryConfig(initial_backoff_seconds=0.5, max_backoff_seconds=2, timeout_seconds=10)
    sender_a = Sender(book(database), config, calling_ae="MEDSEG")
    sender_b = Sender(book(database), config, calling_ae="MEDSEG")
    write_seg_like(tmp_path / "seg.dcm", "1.2")
    a_sending, b_done = threading.Event(), threading.Event()
    results: dict[str, bool] = {}

    def hold_first_send() -> None:
        if not a_sending.is_set():
            a_sending.set()
            assert b_done.wait(30), "sender B never finished its try"

    try:
        with CountingReceiver(on_store=hold_first_send) as receiver:
            job = delivering_job(sender_a.book, receiver.port, tmp_path / "seg.dcm")
            seen_by_b = sender_b.book.store.jobs((DELIVERING,))  # B's stale read
            assert [d.next_attempt for d in seen_by_b[0].pending] == [0.0]

            def run_a() -> None:
                results["a"] = sender_a.deliver(job.id, "recv", Path(job.output), job.created)

            thread_a = threading.Thread(target=run_a)
            thread_a.start()
            assert a_sending.wait(30), "sender A never reached the receiver"
            try:
                results["b"] = sender_b.deliver(job.id, "recv", Path(job.output), job.created)
            finally:
                b_done.set()
            thread_a.join(30)
            assert receiver.total() == 1, receiver.counts
        assert results == {"a": True, "b": False}
        final = sender_b.book.store.get(job.id)
        assert final.state == DONE and final.deliveries[0].attempts == 1
    finally:
        sender_a.close()
        sender_b.close()


def test_a_claimed_delivery_is_not_due_again_until_its_lease_ends(tmp_path: Path) -> None:
    jobs = book(tmp_path / "medseg.db")
    config = DeliveryConfig(initial_backoff_seconds=0.5, max_backoff_seconds=2, timeout_seconds=5)
    sender = Sender(jobs, config, calling_ae="MEDSEG")
    try:
        job = delivering_job(jobs, 1, tmp_path / "seg.dcm")
        assert sender.claim(job.id, "recv", now=1000.0) is not None
        assert sender.claim(job.id, "recv", now=1000.0 + 2) is None, "backoff is not the lease"
        later = 1000.0 + sender.lease_seconds() + 1
        assert sender.claim(job.id, "recv", now=later) is not None, "a dead sender's lease ends"
    finally:
        sender.close()


@pytest.mark.parametrize(
    ("status", "final"),
    [(0xC211, UNDELIVERABLE), (0xA900, UNDELIVERABLE), (0xA700, PENDING)],
)
def test_a_peer_that_refuses_for_good_is_given_up_after_a_few_tries(
    tmp_path: Path, status: int, final: str
) -> None:
    """Issue 23 item 8: "cannot understand" was retried for 72 h; out of resources still is."""
    config = DeliveryConfig(initial_backoff_seconds=0.5, max_backoff_seconds=2, timeout_seconds=10)
    sender = Sender(book(tmp_path / "medseg.db"), config, calling_ae="MEDSEG")
    write_seg_like(tmp_path / "seg.dcm", "1.2")
    try:
        with CountingReceiver(status=status) as receiver:
            job = delivering_job(sender.book, receiver.port, tmp_path / "seg.dcm")
            for _ in range(config.permanent_failure_tries):
                assert not sender.deliver(job.id, "recv", Path(job.output), job.created)
                sender.book.update_delivery(
                    job.id, "recv", lambda d: dataclasses.replace(d, next_attempt=0.0)
                )
            assert receiver.total() == config.permanent_failure_tries
        delivery = sender.book.store.get(job.id).deliveries[0]
        assert delivery.state == final and f"0x{status:04X}" in delivery.error
    finally:
        sender.close()


def test_each_result_file_is_its_own_delivery_in_its_own_sop_class(tmp_path: Path) -> None:
    """A prompt job's SEG and report: a peer that stores SEGs but no SR takes the SEG, and
    the report alone is refused (undeliverable after permanent_failure_tries)."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage, SegmentationStorage, Verification

    from medseg.server.jobs import DELIVERED, REPORT_FILE, SEG_FILE

    outbox = tmp_path / "outbox"
    outbox.mkdir()
    write_seg_like(outbox / SEG_FILE, "1.2")
    sr = pydicom.dcmread(outbox / SEG_FILE)
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    sr.save_as(outbox / REPORT_FILE, enforce_file_format=True)
    stored: list[str] = []
    ae = AE(ae_title="RECEIVER")
    ae.add_supported_context(SegmentationStorage, ExplicitVRLittleEndian)
    ae.add_supported_context(Verification)  # as every storage SCP (storescp, a PACS) does
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, lambda e: stored.append(e.request.AffectedSOPClassUID) or 0)
        ],
    )
    try:
        jobs = book(tmp_path / "medseg.db")
        port = int(server.server_address[1])
        target = Delivery("recv", "RECEIVER", "127.0.0.1", port)
        job = Job(
            job_id_for("1.2.3", 1),
            "1.2.3",
            "1.2",
            "rule",
            mark_uid="1.2.9",
            deliveries=tuple(dataclasses.replace(target, file=f) for f in (SEG_FILE, REPORT_FILE)),
        )
        jobs.create(job)
        jobs.claim(job.id, "worker")
        job = jobs.processed(job.id, "worker", output=str(outbox / SEG_FILE))
        config = DeliveryConfig(permanent_failure_tries=1, timeout_seconds=10)
        sender = Sender(jobs, config, calling_ae="MEDSEG")
        try:
            assert sender.deliver(job.id, "recv", outbox / SEG_FILE, job.created, file=SEG_FILE)
            assert not sender.deliver(
                job.id, "recv", outbox / REPORT_FILE, job.created, file=REPORT_FILE
            )
        finally:
            sender.close()
        final = jobs.store.get(job.id)
        states = {d.file: (d.state, d.error) for d in final.deliveries}
        assert states[SEG_FILE] == (DELIVERED, "")
        assert states[REPORT_FILE][0] == UNDELIVERABLE
        assert "does not accept Comprehensive SR Storage" in states[REPORT_FILE][1]
        assert final.state == DONE and stored == [SegmentationStorage]
    finally:
        server.shutdown()
