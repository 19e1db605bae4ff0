"""Running one job: claim the record, segment the series with a heartbeat, put the SEG out.

The huey task only calls ``JobRunner.run(job_id)``. The claim (a CAS on the job record)
decides whether this worker runs the job; while it runs, a heartbeat thread renews the
lease, so a job whose worker was killed is found by the sweep once the lease expires and
runs again. Errors another attempt cannot fix (bad input, configuration, prompt, a missing
or broken model or backend) fail the job at once with their message; transient ones (a
failed write, anything unexpected) are retried after ``retry_delay_seconds`` until
``max_attempts``.
"""

from __future__ import annotations

import functools
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

from pydicom.filereader import read_file_meta_info

from medseg.durable import write_with
from medseg.errors import ConfigError, DicomInputError, ModelError, OutputError, PromptError
from medseg.server.config import ModelConfig, QueueConfig
from medseg.server.jobs import PREVIEW_FILE, QUEUED, SEG_FILE, Job, JobBook
from medseg.server.spool import Spool

if TYPE_CHECKING:  # pragma: no cover
    from medseg.pipeline import LoadedModel, SegmentOptions

logger = logging.getLogger(__name__)

# Errors that another attempt cannot fix: the job fails at once with the message. A model
# that is missing or corrupt, or a backend that is not installed (EngineUnavailableError is
# a ModelError), stays so: retrying would only reload it max_attempts times. OutputError and
# OSError (disk full, unwritable folder) may pass, so they are retried.
PERMANENT_ERRORS = (DicomInputError, ConfigError, ModelError, PromptError)


@dataclass(frozen=True)
class Outcome:
    """What a segmentation produced, as the job record keeps it; ``report`` is the
    measurement report beside the SEG (prompt jobs), in the same outbox folder."""

    output: Path
    seg_uid: str
    slices: int
    volume_ml: float
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    report: Path | None = None
    report_uid: str = ""


Segmenter = Callable[[list[Path], Path, Job], Outcome]


class PipelineSegmenter:
    """Runs ``medseg.pipeline.segment`` and keeps opened models across jobs (one per file).

    Models are keyed by their resolved path and loaded under a per-model lock, so a worker
    loading one model does not hold up workers using another.
    """

    def __init__(self, config: ModelConfig, *, previews: bool = False) -> None:
        self.config = config
        self.previews = previews  # also write preview.png beside the SEG (the dashboard's)
        self._models: dict[Path, LoadedModel] = {}
        self._loading: dict[Path, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the two dicts only, never held while loading

    def options(self, job: Job) -> SegmentOptions:
        """The pipeline options for ``job``: its rule's settings over the [model] section."""
        from medseg.pipeline import SegmentOptions
        from medseg.server.ruleprompts import parse_rule_prompts

        return SegmentOptions(
            model=self.model_path(job.model, prompted=bool(job.prompts or job.mark_uid)),
            backend=self.config.backend,
            threads=self.config.threads or None,
            providers=self.config.providers,
            window=job.window or "auto",
            threshold=job.threshold,
            prompts=parse_rule_prompts(job.prompts),
            series_uid=job.series_uid,
        )

    def model_path(self, rule_model: str = "", prompted: bool = False) -> Path:
        """The resolved model file for a rule's ``model``: '' = ``[model].path``, and '' there
        = the bundled model (``medseg.modelcard.default_model_path``). For ``prompted`` jobs
        '' = ``[model].prompt_path``, else ``[model].path`` if that model takes prompts,
        else the bundled promptable model."""
        from medseg.modelcard import default_model_path

        model = rule_model or (self._prompt_default if prompted else self.config.path)
        if model:
            return Path(model).expanduser().resolve()
        try:
            return default_model_path(prompted).resolve()
        except ConfigError as exc:
            key = "[model].prompt_path" if prompted else "[model].path"
            raise ModelError(
                f"{exc}: set {key} (or a rule's model) to a .onnx with its model card"
            ) from None

    @functools.cached_property
    def _prompt_default(self) -> str:
        """``[model].prompt_path``, or ``[model].path`` when that model takes prompts (its
        card read once, not for every job)."""
        if self.config.prompt_path or not self.config.path:
            return self.config.prompt_path
        from medseg.modelcard import load_card_for

        path = Path(self.config.path).expanduser()
        try:
            promptable = load_card_for(path).promptable
        except (ConfigError, OSError, ValueError):
            promptable = False  # a missing or broken model is reported where it is used
        return self.config.path if promptable else ""

    def _key_lock(self, key: Path) -> threading.Lock:
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())

    def model(self, options: SegmentOptions) -> LoadedModel:
        """The opened model for ``options.model``, loaded on first use."""
        from medseg.pipeline import load_model

        key = Path(options.model) if options.model else self.model_path()
        with self._key_lock(key):
            with self._lock:
                loaded = self._models.get(key)
            if loaded is None:
                loaded = load_model(options)
                with self._lock:
                    self._models[key] = loaded
            return loaded

    def preload(self, rule_models: list[tuple[str, bool]]) -> list[Path]:
        """Open every model the rules name now: a broken one stops the service at start."""
        from dataclasses import replace

        from medseg.pipeline import SegmentOptions

        base = SegmentOptions(
            backend=self.config.backend,
            threads=self.config.threads or None,
            providers=self.config.providers,
        )
        paths = list(dict.fromkeys(self.model_path(m, prompted) for m, prompted in rule_models))
        for path in paths:
            self.model(replace(base, model=path))
        return paths

    def __call__(self, files: list[Path], output: Path, job: Job) -> Outcome:
        """Segment the series; a prompt job (``job.mark_uid``) takes the marks of its mark
        object as prompts and writes the measurement report beside the SEG."""
        from medseg.pipeline import segment
        from medseg.server.markjobs import mark_options

        options = self.options(job)
        if job.mark_uid:
            options = mark_options(options, job, files, output)
        if self.previews:
            from dataclasses import replace

            options = replace(options, preview=output.parent / PREVIEW_FILE)
        result = segment(files, output, options, model=self.model(options))
        report_uid = ""
        if result.report is not None:
            meta = read_file_meta_info(result.report)
            report_uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
        return Outcome(
            output=Path(result.output),
            seg_uid=result.sop_instance_uid,
            slices=result.slices,
            volume_ml=result.volume_ml,
            seconds=result.seconds,
            timings=dict(result.timings),
            report=result.report,
            report_uid=report_uid,
        )

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for model in models:
            model.close()


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
            outcome = self.segmenter(files, folder / SEG_FILE, job)
            if job.output_folder:
                _copy_out(outcome.output, Path(job.output_folder), job, ".seg.dcm")
                if outcome.report is not None:
                    _copy_out(outcome.report, Path(job.output_folder), job, ".sr.dcm")
        except PERMANENT_ERRORS as exc:
            logger.error("job %s failed: %s", job.id, exc)
            self.book.failed(job.id, owner, str(exc), retry_in=None)
            return
        except (OutputError, OSError) as exc:  # a full disk or a flaky share may recover
            logger.warning("job %s: %s; retrying", job.id, exc)
            self._retry(job, owner, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:
            logger.exception("job %s: unexpected error; retrying", job.id)
            self._retry(job, owner, f"{type(exc).__name__}: {exc}")
            return
        done = self.book.processed(
            job.id,
            owner,
            output=str(outcome.output),
            seg_uid=outcome.seg_uid,
            report_uid=outcome.report_uid,
            slices=outcome.slices,
            volume_ml=outcome.volume_ml,
            seconds=outcome.seconds,
            timings=tuple((k, round(float(v), 3)) for k, v in outcome.timings.items()),
        )
        if done is None:
            logger.warning("job %s: finished after losing its lease; result discarded", job.id)
            return
        logger.info(
            "job %s: SEG %s%s written (%d slices, %.1f ml, %.1f s: %s)",
            job.id,
            outcome.seg_uid,
            f" and report {outcome.report_uid}" if outcome.report_uid else "",
            outcome.slices,
            outcome.volume_ml,
            outcome.seconds,
            ", ".join(f"{k} {v:.1f}" for k, v in outcome.timings.items() if v),
        )
        self.on_processed()

    def _retry(self, job: Job, owner: str, error: str) -> None:
        """Count the failed attempt; queue the job again later unless attempts are used up."""
        delay = self.queue_config.retry_delay_seconds
        updated = self.book.failed(job.id, owner, error, retry_in=delay)
        if updated is not None and updated.state == QUEUED:
            logger.info("job %s: attempt %d failed, retry in %.0f s", job.id, job.attempts, delay)
            self.enqueue(job.id, delay)

    def release_all(self) -> None:
        """Graceful shutdown ran out of time: give running jobs back to the queue."""
        for job_id, owner in self.running().items():
            if self.book.release(job_id, owner) is not None:
                logger.info("job %s: released for another worker", job_id)


def _copy_out(result: Path, folder: Path, job: Job, suffix: str) -> None:
    """Put a copy of a result into a rule's output folder (temp file + fsync + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{job.series_uid}_{job.id[-12:]}{suffix}"
    with open(result, "rb") as source:
        write_with(target, lambda handle: shutil.copyfileobj(source, handle))
