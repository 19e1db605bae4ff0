"""Job records for tests that start past the segmentation: a job whose SEG is written and
waits in the outbox for one destination."""

from __future__ import annotations

from pathlib import Path

from medseg.server.jobs import DELIVERING, Delivery, Job, JobBook, job_id_for


def delivering_job(book: JobBook, port: int, output: Path, series_uid: str = "1.2.3") -> Job:
    """A job for ``series_uid`` claimed, processed (SEG at ``output``) and now delivering
    to a receiver on 127.0.0.1:``port``."""
    job = Job(
        job_id_for(series_uid, 1),
        series_uid,
        series_uid.rpartition(".")[0] or "1.2",
        "rule",
        deliveries=(Delivery("recv", "RECEIVER", "127.0.0.1", port),),
    )
    book.create(job)
    book.claim(job.id, "worker")
    done = book.processed(job.id, "worker", output=str(output))
    assert done is not None and done.state == DELIVERING
    return done
