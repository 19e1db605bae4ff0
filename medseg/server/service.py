"""Putting the pieces together: ``medseg serve`` and ``medseg worker``.

One ``Service`` owns the spool, the job book, the huey queue and consumer, the sender and,
when it listens, the listener and the series tracker. A housekeeping thread completes idle
series, sweeps stale jobs back onto the queue, starts due deliveries and applies retention;
each of those steps, and each series or job inside one, fails on its own: a full disk or
one bad record is reported (``health.py``, shown by ``medseg status``) and retried at the
next round while the others go on.
SIGTERM stops the listener first, then lets running jobs finish for
``queue.shutdown_timeout_seconds`` and gives back those still running.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from medseg.errors import MedsegError
from medseg.server.completion import HELD, SUBMITTED, UNMATCHED, SeriesInfo, SeriesTracker
from medseg.server.config import CALLER, ServerConfig
from medseg.server.health import Health
from medseg.server.jobs import DONE, FAILED, Delivery, Job, JobBook, JobStore, job_id_for
from medseg.server.jobstore import RedisJobStore, SqliteJobStore
from medseg.server.listener import TRANSFER_SYNTAXES, StoreHandler, start_listener
from medseg.server.markjobs import MarkInbox, MarkJobs
from medseg.server.queue import JobQueue
from medseg.server.retrieve import RetrievalBook, Retriever
from medseg.server.routing import route
from medseg.server.sender import Sender
from medseg.server.sopclasses import IMAGE_CLASSES, OTHER_CLASSES
from medseg.server.spool import Spool
from medseg.server.tls import client_context, server_context
from medseg.server.worker import JobRunner, PipelineSegmenter, Segmenter

logger = logging.getLogger(__name__)

RETENTION_CHECK_SECONDS = 60.0


def open_spool(config: ServerConfig) -> Spool:
    return Spool(
        config.spool_dir,
        min_free_bytes=int(config.storage.min_free_mb * 2**20),
        fsync=config.storage.fsync,
    )


def open_store(config: ServerConfig, spool: Spool) -> JobStore:
    """SQLite in the spool for the embedded queue; Redis (shared) for scale-out."""
    if config.queue.backend == "redis":
        return RedisJobStore(config.queue.redis_url, config.queue.name)
    return SqliteJobStore(spool.database)


def deliveries_for(
    config: ServerConfig, rule_destinations: tuple[str, ...], series: SeriesInfo
) -> tuple[Delivery, ...]:
    """Resolve a rule's destination names to addresses (``caller``: the peer's return address)."""
    found: list[Delivery] = []
    for name in rule_destinations:
        if name == CALLER:
            peer = config.peer(series.calling_ae)
            if peer is None or not peer.return_port:
                logger.warning(
                    "series %s: calling AE %s has no return address configured; not sent back",
                    series.series_uid,
                    series.calling_ae,
                )
                continue
            found.append(
                Delivery(
                    name=CALLER,
                    ae_title=peer.return_ae_title or peer.ae_title,
                    host=peer.return_host or series.peer_host,
                    port=peer.return_port,
                    tls=peer.tls,
                )
            )
        else:
            dest = config.destination(name)
            if dest is not None:
                found.append(Delivery(dest.name, dest.ae_title, dest.host, dest.port, dest.tls))
    return tuple(found)


class Service:
    """The listener service (``listen=True``) or a scale-out worker (``listen=False``)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        listen: bool = True,
        workers: int | None = None,
        segmenter: Segmenter | None = None,
    ) -> None:
        self.config = config
        self.listen = listen
        self.workers = config.queue.workers if workers is None else workers
        self.spool = open_spool(config)
        self.store = open_store(config, self.spool)
        self.book = JobBook(
            self.store,
            lease_seconds=config.queue.lease_seconds,
            max_attempts=config.queue.max_attempts,
        )
        self.tracker = SeriesTracker(self.spool.database) if listen else None
        self.inbox = MarkInbox(self.spool.database) if listen else None
        self._segmenter = segmenter or PipelineSegmenter(config.model, previews=config.web.enabled)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.runner = JobRunner(
            self.book,
            self.spool,
            config.queue,
            self._segmenter,
            enqueue=self.enqueue,
            on_processed=self._wake.set,
        )
        self.queue = JobQueue(config.queue, self.spool.root, handler=self.runner.run)
        self.retriever = self._retriever()
        self.mark_jobs = (
            MarkJobs(
                config,
                self.spool,
                self.tracker,
                self.inbox,
                self.book,
                enqueue=self.enqueue,
                deliveries=lambda names, series: deliveries_for(config, names, series),
                retrievals=self.retriever.book if self.retriever is not None else None,
                retrieve_now=self.retriever.wake if self.retriever is not None else lambda: None,
            )
            if self.tracker is not None and self.inbox is not None
            else None
        )
        tls = config.tls
        self.sender = Sender(
            self.book,
            config.delivery,
            calling_ae=config.listener.ae_title,
            tls_context=client_context(tls),
        )
        self._server_ssl = server_context(tls) if tls.enabled else None
        self.health = Health.in_spool(self.spool.root, "serve" if listen else "worker")
        self.server = None
        self.web = None  # the HTTP side (dashboard, /api/, /metrics): medseg.server.web
        self.consumer = None
        self._housekeeper: threading.Thread | None = None
        self._last_sweep = 0.0
        self._last_retention = 0.0
        self._models_checked = False

    def _retriever(self) -> Retriever | None:
        """With ``[retrieve]``, on the listening node: fetches the series marks reference
        and medseg does not hold; what arrives takes the listener's storage path."""
        settings = self.config.retrieve
        if not settings.method or self.tracker is None:
            return None
        tracker = self.tracker
        classes = (*IMAGE_CLASSES, *OTHER_CLASSES)
        return Retriever(
            settings,
            RetrievalBook(self.spool.database),
            calling_ae=self.config.listener.ae_title,
            store=StoreHandler(self.spool, tracker),
            storage_contexts=[(str(c), list(TRANSFER_SYNTAXES)) for c in classes],
            tls_context=client_context(self.config.tls) if settings.tls else None,
            arrived=lambda series_uid: tracker.get(series_uid) is not None,
        )

    # -- queue ---------------------------------------------------------------------------
    def enqueue(self, job_id: str, delay: float = 0.0) -> None:
        self.book.enqueued(job_id)
        self.queue.enqueue(job_id, delay)

    def sweep(self, *, all_queued: bool = False) -> int:
        """Re-enqueue jobs whose lease expired or whose message was lost."""
        stale = self.book.stale(all_queued=all_queued)
        for job in stale:
            logger.info("job %s: re-enqueued (%s)", job.id, job.state)
            self._item(f"job {job.id}", lambda job=job: self.enqueue(job.id))
        return len(stale)

    def _item(self, what: str, action: Callable[[], object]) -> bool:
        """Run one item of a step; a failure is reported and the step goes on."""
        try:
            action()
        except Exception as exc:  # one bad item must not stop the others; reported
            self.health.failed(what, exc)
            return False
        self.health.ok(what)
        return True

    # -- series completion ---------------------------------------------------------------
    def complete_series(self) -> list[Job]:
        """Turn every idle series into a job (or mark it unmatched); returns new jobs."""
        if self.tracker is None:  # a worker: series completion is the listener's job
            return []
        created: list[Job] = []
        for series in self.tracker.due(self.config.completion.series_idle_seconds):
            self._item(
                f"series {series.series_uid}", lambda series=series: self._complete(series, created)
            )
        return created

    def resolve_marks(self) -> list[Job]:
        """Turn waiting mark objects whose series are complete into prompt jobs."""
        return self.mark_jobs.resolve() if self.mark_jobs is not None else []

    def _complete(self, series: SeriesInfo, created: list[Job]) -> None:
        """Turn one idle series into a job (appended to ``created``), or mark it unmatched."""
        if self.tracker is None:  # pragma: no cover - only called with a tracker
            return
        files = self.spool.series_files(series.study_uid, series.series_uid)
        rule = route(self.config.rules, series, len(files))
        if rule is None:
            if self.tracker.close_epoch(series, UNMATCHED):
                logger.info(
                    "series %s (%s, %d instances): %s; kept, not processed",
                    series.series_uid,
                    series.modality,
                    len(files),
                    "no rule matches" if series.is_image else "not an image series",
                )
            return
        if not rule.automatic:
            if self.tracker.close_epoch(series, HELD):
                logger.info(
                    "series %s (%d instances): rule %s runs no automatic job; kept for marks",
                    series.series_uid,
                    len(files),
                    rule.name,
                )
            return
        job = Job(
            id=job_id_for(series.series_uid, series.epoch + 1),
            series_uid=series.series_uid,
            study_uid=series.study_uid,
            rule=rule.name,
            model=rule.model,
            window=rule.window,
            threshold=rule.threshold,
            prompts=rule.prompts,
            output_folder=rule.output_folder,
            deliveries=deliveries_for(self.config, rule.destinations, series),
        )
        self.book.create(job)
        if self.tracker.close_epoch(series, SUBMITTED, job.id):
            logger.info(
                "series %s of study %s complete (%d instances): job %s, rule %s",
                series.series_uid,
                series.study_uid,
                len(files),
                job.id,
                rule.name,
            )
            self.enqueue(job.id)
            created.append(job)
        else:
            self.store.delete(job.id)  # reopened meanwhile: it completes again later

    # -- retention -----------------------------------------------------------------------
    def apply_retention(self, now: float | None = None) -> int:
        """Remove finished jobs' outbox and record, and handled series, past retention."""
        hours = self.config.storage.retention_hours
        if hours <= 0:
            return 0
        now = time.time() if now is None else now
        cutoff = now - hours * 3600
        removed = 0
        for job in self.store.jobs((DONE, FAILED)):
            if job.updated < cutoff:
                removed += self._item(f"job {job.id}", lambda job=job: self._forget_job(job.id))
        if self.tracker is not None:
            for series in self.tracker.expired(cutoff):
                removed += self._item(
                    f"series {series.series_uid}", lambda series=series: self._forget(series)
                )
        if self.inbox is not None:
            inbox, forgotten = self.inbox, []
            self._item("marks retention", lambda: forgotten.append(inbox.forget_before(cutoff)))
            removed += sum(forgotten)
        if self.retriever is not None:
            book, dropped = self.retriever.book, []
            self._item("retrieval retention", lambda: dropped.append(book.forget_before(cutoff)))
            removed += sum(dropped)
        return removed

    def _forget_job(self, job_id: str) -> None:
        self.spool.remove_job(job_id)
        self.store.delete(job_id)

    def _forget(self, series: SeriesInfo) -> None:
        if self.tracker is not None:
            self.spool.remove_series(series.study_uid, series.series_uid)
            self.tracker.forget(series.series_uid)

    # -- life cycle ----------------------------------------------------------------------
    def _housekeeping(self) -> None:
        interval = self.config.completion.check_interval_seconds
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # keep the service alive; the error is in the log
                logger.exception("housekeeping failed")
            self._wake.wait(interval)
            self._wake.clear()

    def tick(self, now: float | None = None) -> None:
        """One round of housekeeping (also callable directly, e.g. from tests).

        Every step runs whatever the one before did: a full disk under the series table
        must not stop deliveries, and a step that fails is tried again next round.
        """
        now = time.time() if now is None else now
        if self.tracker is not None:
            self._item("series completion", self.complete_series)
        self._item("marks", self.resolve_marks)
        if now - self._last_sweep >= self.config.queue.sweep_interval_seconds:
            self._last_sweep = now
            self._item("sweep", self.sweep)
        self._item("deliveries", self.sender.run_once)
        if now - self._last_retention >= RETENTION_CHECK_SECONDS:
            self._last_retention = now
            self._item("retention", lambda: self.apply_retention(now))
        self.health.save()

    # -- models --------------------------------------------------------------------------
    def check_models(self) -> list[Path]:
        """Open every model the rules use before accepting images; raise if one is broken.

        A node that accepts series it cannot segment fails every job; better to refuse to
        start with the reason. With workers the models are loaded (and kept for the first
        jobs); a listen-only node on the embedded queue checks the files and cards only
        (its workers run beside it), one feeding Redis workers elsewhere checks nothing:
        those workers check at their own start.
        """
        rule_models = [(rule.model, bool(rule.prompts)) for rule in self.config.rules]
        rule_models += [(r.marks_model or r.model, True) for r in self.config.rules if r.marks]
        if not rule_models:
            self._models_checked = True
            return []
        try:
            if self.workers > 0 and hasattr(self._segmenter, "preload"):
                paths = self._segmenter.preload(rule_models)
            elif self.workers == 0 and self.config.queue.backend == "sqlite":
                paths = [self._check_model_file(*wanted) for wanted in rule_models]
            else:
                paths = []
            self._check_rule_prompts()
        except MedsegError as exc:
            message = " ".join(str(exc).split())
            raise type(exc)(f"cannot start: {message}") from exc
        self._models_checked = True
        for path in dict.fromkeys(paths):
            logger.info("model %s ready", path)
        return paths

    def _check_rule_prompts(self) -> None:
        """A rule with prompts, or one that takes marks, needs a promptable model."""
        from medseg.modelcard import load_card_for
        from medseg.pipeline import check_promptable

        for rule in self.config.rules:
            needs = [(rule.model, "has prompts")] if rule.prompts else []
            if rule.marks:
                needs.append((rule.marks_model or rule.model, "takes marks"))
            for model, why in needs:
                path = PipelineSegmenter(self.config.model).model_path(model, prompted=True)
                try:
                    check_promptable(load_card_for(path))
                except MedsegError as exc:
                    raise type(exc)(f"rule {rule.name!r} {why}: {exc}") from exc

    def _check_model_file(self, rule_model: str, prompted: bool = False) -> Path:
        from medseg.pipeline import SegmentOptions, resolve_model

        path = PipelineSegmenter(self.config.model).model_path(rule_model, prompted)
        resolve_model(SegmentOptions(model=path))
        return path

    def wake(self) -> None:
        """Run housekeeping (completion, sender) now rather than at the next interval."""
        self._wake.set()

    def start(self) -> None:
        if not self._models_checked:
            self.check_models()
        self.health.start()
        if self.listen and self.config.web.enabled:
            from medseg.server.web.side import start_web

            self.web = start_web(self)
        if self.tracker is not None:
            recovered = self.tracker.recover(self.spool.incoming)
            if recovered:
                logger.warning("recovered %d spooled series the database had lost", recovered)
        if self.listen:
            self.server = start_listener(
                self.config,
                self.spool,
                self.tracker,
                ssl_context=self._server_ssl,
                marks=self.inbox,
            )
        if self.listen and self.web is not None:
            self.web.watch_listener(self.server)
        if self.retriever is not None:
            self.retriever.start(self.config.completion.check_interval_seconds)
        self._item("sweep", lambda: self.sweep(all_queued=True))
        self._last_sweep = time.time()
        if self.workers > 0:
            self.consumer = self.queue.consumer(
                self.workers, self.config.queue.shutdown_timeout_seconds
            )
            # Started piece by piece: huey's Consumer.start() would install its own signal
            # handlers (and re-exec on SIGHUP); medseg owns the signals.
            self.consumer.scheduler.start()
            for _, thread in self.consumer.worker_threads:
                thread.start()
        self._housekeeper = threading.Thread(
            target=self._housekeeping, name="medseg-housekeeping", daemon=True
        )
        self._housekeeper.start()
        logger.info(
            "medseg %s started: %d worker(s), queue %s, spool %s",
            "serve" if self.listen else "worker",
            self.workers,
            self.config.queue.backend,
            self.spool.root,
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1]) if self.server else 0

    def stop(self) -> None:
        """Stop listening, let running jobs finish (bounded), give back the rest."""
        if self.web is not None:
            self.web.stop()
            self.web = None
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self._stop.set()
        self._wake.set()
        if self.retriever is not None:
            self.retriever.stop(self.config.retrieve.timeout_seconds + 5)
        if self.consumer is not None:
            self.consumer.stop(graceful=True)
            self.runner.release_all()
            self.consumer = None
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=10)
        self.sender.close()
        if hasattr(self._segmenter, "close"):
            self._segmenter.close()
        self.health.stop()
        logger.info("medseg stopped")

    def run_forever(self) -> None:
        """Check the models, start, then block until SIGTERM or SIGINT; shut down gracefully."""
        self.check_models()  # a broken model: one error line, nothing started, nothing to stop
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logger.info("received %s: shutting down", signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.wait(1.0):
                if self.consumer is not None:
                    self.consumer.check_worker_health()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop()
