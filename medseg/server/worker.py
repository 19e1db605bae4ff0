"""Running one job: claim the record, segment the series with a heartbeat, put the SEG out.

The huey task only calls ``JobRunner.run(job_id)``. The claim (a CAS on the job record)
decides whether this worker runs the job; while it runs, a heartbeat thread renews the
lease, so a job whose worker was killed is found by the sweep once the lease expires and
runs again. Errors another attempt cannot fix (bad input, configuration, prompt) fail the
job at once with their message; anything else is retried after ``retry_delay_seconds``
until ``max_attempts``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.errors import ConfigError, DicomInputError, PromptError
from medseg.server.config import ModelConfig, QueueConfig
from medseg.server.jobs import QUEUED, Job, JobBook
from medseg.server.spool import Spool, fsync_dir

if TYPE_CHECKING:  # pragma: no cover
    from medseg.pipeline import LoadedModel, SegmentOptions

logger = logging.getLogger(__name__)

# Errors that another attempt cannot fix: the job fails at once with the message.
PERMANENT_ERRORS = (DicomInputError, ConfigError, PromptError)


@dataclass(frozen=True)
class Outcome:
    """What a segmentation produced, as the job record keeps it."""

    output: Path
    seg_uid: str
    slices: int
    volume_ml: float
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


Segmenter = Callable[[list[Path], Path, Job], Outcome]


class PipelineSegmenter:
    """Runs ``medseg.pipeline.segment`` and keeps opened models across jobs (one per path)."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def _options(self, job: Job) -> SegmentOptions:
        from medseg.pipeline import SegmentOptions

        model = job.model or self.config.path
        return SegmentOptions(
            model=Path(model) if model else None,
            backend=self.config.backend,
            threads=self.config.threads or None,
            window=job.window or "auto",
            threshold=job.threshold or None,
            series_uid=job.series_uid,
        )

    def _model(self, options: SegmentOptions) -> LoadedModel:
        from medseg.pipeline import load_model

        key = str(options.model)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(options)
            return self._models[key]

    def __call__(self, files: list[Path], output: Path, job: Job) -> Outcome:
        from medseg.pipeline import segment

        options = self._options(job)
        result = segment(files, output, options, model=self._model(options))
        return Outcome(
            output=Path(result.output),
            seg_uid=result.sop_instance_uid,
            slices=result.slices,
            volume_ml=result.volume_ml,
            seconds=result.seconds,
            timings=dict(result.timings),
        )

    def close(self) -> None:
        with self._lock:
            for model in self._models.values():
                model.close()
            self._models.clear()


class _Heartbeat(threading.Thread):
    """Renews a job's lease every third of its length until stopped."""

    def __init__(self, book: JobBook, job_id: str, owner: str) -> None:
        super().__init__(name=f"medseg-heartbeat-{job_id[-8:]}", daemon=True)
        self.book, self.job_id, self.owner = book, job_id, owner
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.book.lease_seconds / 3):
            if not self.book.heartbeat(self.job_id, self.owner):
                self.lost = True
                logger.warning("job %s: lease lost; another worker may run it", self.job_id)
                return


class JobRunner:
    """What the queue's task does with a job id."""

    def __init__(
        self,
        book: JobBook,
        spool: Spool,
        queue_config: QueueConfig,
        segmenter: Segmenter,
        *,
        enqueue: Callable[[str, float], None],
        on_processed: Callable[[], None] = lambda: None,
    ) -> None:
        self.book = book
        self.spool = spool
        self.queue_config = queue_config
        self.segmenter = segmenter
        self.enqueue = enqueue
        self.on_processed = on_processed
        self._running: dict[str, str] = {}
        self._lock = threading.Lock()

    def running(self) -> dict[str, str]:
        """job id -> owner for the jobs this process is running now."""
        with self._lock:
            return dict(self._running)

    def run(self, job_id: str) -> None:
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        job = self.book.claim(job_id, owner)
        if job is None:
            logger.debug("job %s: not claimable (done, running elsewhere or not due)", job_id)
            return
        logger.info(
            "job %s: attempt %d for series %s (study %s), rule %s",
            job.id,
            job.attempts,
            job.series_uid,
            job.study_uid,
            job.rule,
        )
        with self._lock:
            self._running[job.id] = owner
        heartbeat = _Heartbeat(self.book, job.id, owner)
        heartbeat.start()
        try:
            self._process(job, owner)
        finally:
            heartbeat.stopped.set()
            with self._lock:
                self._running.pop(job.id, None)

    def _process(self, job: Job, owner: str) -> None:
        try:
            files = self.spool.series_files(job.study_uid, job.series_uid)
            if not files:
                raise DicomInputError(f"no spooled instances for series {job.series_uid}")
            folder = self.spool.job_dir(job.id)
            folder.mkdir(parents=True, exist_ok=True)
            outcome = self.segmenter(files, folder / "seg.dcm", job)
            if job.output_folder:
                _copy_out(outcome.output, Path(job.output_folder), job)
        except PERMANENT_ERRORS as exc:
            logger.error("job %s failed: %s", job.id, exc)
            self.book.failed(job.id, owner, str(exc), retry_in=None)
            return
        except Exception as exc:
            delay = self.queue_config.retry_delay_seconds
            logger.exception("job %s: unexpected error, retrying in %.0f s", job.id, delay)
            updated = self.book.failed(
                job.id, owner, f"{type(exc).__name__}: {exc}", retry_in=delay
            )
            if updated is not None and updated.state == QUEUED:
                self.enqueue(job.id, delay)
            return
        done = self.book.processed(
            job.id,
            owner,
            output=str(outcome.output),
            seg_uid=outcome.seg_uid,
            slices=outcome.slices,
            volume_ml=outcome.volume_ml,
            seconds=outcome.seconds,
        )
        if done is None:
            logger.warning("job %s: finished after losing its lease; result discarded", job.id)
            return
        logger.info(
            "job %s: SEG %s written (%d slices, %.1f ml, %.1f s: %s)",
            job.id,
            outcome.seg_uid,
            outcome.slices,
            outcome.volume_ml,
            outcome.seconds,
            ", ".join(f"{k} {v:.1f}" for k, v in outcome.timings.items() if v),
        )
        self.on_processed()

    def release_all(self) -> None:
        """Graceful shutdown ran out of time: give running jobs back to the queue."""
        for job_id, owner in self.running().items():
            if self.book.release(job_id, owner) is not None:
                logger.info("job %s: released for another worker", job_id)


def _copy_out(seg: Path, folder: Path, job: Job) -> None:
    """Put a copy of the SEG into a rule's output folder (temp file + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{job.series_uid}_{job.id[-12:]}.seg.dcm"
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(seg, tmp)
    os.replace(tmp, target)
    fsync_dir(folder)
