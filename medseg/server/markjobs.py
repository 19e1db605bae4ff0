"""A reader's marks received by C-STORE become prompt jobs (docs/server.md, "Marks").

A GSPS or TID 1500 SR that arrives at the listener is recorded in the ``marks`` table of the
spool's ``medseg.db`` as soon as it is on disk (``MarkInbox.received``), committed with
``synchronous=FULL`` like the job records: marks are rare, and one acknowledged must not be
lost. The housekeeping loop then resolves each waiting mark object (``MarkJobs.resolve``):

- it reads the marks (``medseg.dicom.marks.read_marks``); an object medseg cannot use (an
  unsupported graphic, no mark at all) is *rejected*, logged and shown in ``medseg status``;
- it finds the series the object references (its Referenced Series / evidence sequences,
  and the spooled series that hold the images its marks are drawn on);
- while a referenced series is still arriving, or is not here and the object is younger
  than ``[marks] wait_seconds``, it waits: a mark may come before or during its series;
- with ``[retrieve]`` configured, a referenced series that is not here is asked of the PACS
  at once (``medseg.server.retrieve``) and the mark waits for that retrieval instead (it is
  bounded by its tries); one that could not be retrieved leaves the mark unresolved;
- for every complete image series that carries some of its marks and whose rule takes marks
  (``marks = true``), it makes one prompt job, identified by (series, mark object), so the
  same object received twice is one job and another object on the same series a new one;
- an object that yields no job is *unresolved*, with the reason, in the log and the status.

Nothing here logs a patient's name or ID: marks are named by their SOP Instance UID.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from medseg.dicom.marks import Mark, read_marks
from medseg.dicom.marks.gsps import GSPS_SOP_CLASS
from medseg.dicom.marks.sr import SR_SOP_CLASSES
from medseg.errors import DicomInputError, MedsegError, PromptError
from medseg.server.completion import RECEIVING, SeriesInfo, SeriesTracker
from medseg.server.config import RuleConfig, ServerConfig
from medseg.server.jobs import REPORT_FILE, SEG_FILE, Delivery, Job, JobBook, mark_job_id
from medseg.server.retrieve import FAILED as RETRIEVAL_FAILED
from medseg.server.retrieve import PENDING as RETRIEVAL_PENDING
from medseg.server.retrieve import RUNNING as RETRIEVAL_RUNNING
from medseg.server.retrieve import RetrievalBook, describe_pacs
from medseg.server.routing import route
from medseg.server.spool import Spool
from medseg.server.sqlite import PerThread, transaction
from medseg.server.uids import UnsafeUidError, checked_uid

logger = logging.getLogger(__name__)

MARK_SOP_CLASSES = frozenset({GSPS_SOP_CLASS, *SR_SOP_CLASSES})

# Mark object states: waiting for its series; its prompt job(s) made; no job could be made
# (references nothing usable, gave up waiting); the object itself cannot be used.
WAITING, SUBMITTED, UNRESOLVED, REJECTED = "waiting", "submitted", "unresolved", "rejected"
MARK_STATES = (WAITING, SUBMITTED, UNRESOLVED, REJECTED)

# What a prompt job's SEG says in a worklist (the research label is added to it).
MARK_SERIES_DESCRIPTION = "medseg lesions from marks"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    peer_host TEXT NOT NULL DEFAULT '',
    received REAL NOT NULL,
    updated REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    detail TEXT NOT NULL DEFAULT '',
    jobs TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS marks_state ON marks(state, received);
"""


def is_mark_class(sop_class_uid: str) -> bool:
    """Whether an instance of ``sop_class_uid`` may hold a reader's marks (GSPS, SR)."""
    return str(sop_class_uid).strip() in MARK_SOP_CLASSES


@dataclass(frozen=True)
class MarkRecord:
    """One received mark object as the marks table keeps it (UIDs, never patient data).

    ``study_uid``/``series_uid`` are the object's own (where the spool keeps it);
    ``calling_ae``/``peer_host`` who sent it (the ``caller`` destination of its jobs).
    """

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class: str = ""
    calling_ae: str = ""
    peer_host: str = ""
    received: float = 0.0
    updated: float = 0.0
    state: str = WAITING
    detail: str = ""
    jobs: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> MarkRecord:
        data = dict(row)
        data["jobs"] = tuple(data["jobs"].split()) if data["jobs"] else ()
        return cls(**data)


class MarkInbox:
    """The marks table: mark objects in, their state out (listener node only)."""

    def __init__(self, database: Path) -> None:
        self._conn = PerThread(Path(database))  # synchronous=FULL: an acknowledged mark stays
        self._conn().executescript(_SCHEMA)

    def received(self, record: MarkRecord, now: float | None = None) -> None:
        """Record an arrival. The same object received again waits (and resolves) again:
        its job id is the same, so a job already made is not made twice."""
        now = time.time() if now is None else now
        with transaction(self._conn()) as conn:
            conn.execute(
                "INSERT INTO marks (sop_uid, study_uid, series_uid, sop_class, calling_ae,"
                " peer_host, received, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(sop_uid) DO UPDATE SET state = 'waiting', detail = '',"
                " received = excluded.received, updated = excluded.updated,"
                " calling_ae = excluded.calling_ae, peer_host = excluded.peer_host",
                (
                    record.sop_uid,
                    record.study_uid,
                    record.series_uid,
                    record.sop_class,
                    record.calling_ae,
                    record.peer_host,
                    now,
                    now,
                ),
            )

    def waiting(self) -> list[MarkRecord]:
        rows = self._conn().execute(
            "SELECT * FROM marks WHERE state = ? ORDER BY received", (WAITING,)
        )
        return [MarkRecord.from_row(row) for row in rows]

    def settle(self, sop_uid: str, state: str, detail: str = "", jobs: Sequence[str] = ()) -> None:
        with transaction(self._conn()) as conn:
            conn.execute(
                "UPDATE marks SET state = ?, detail = ?, jobs = ?, updated = ?"
                " WHERE sop_uid = ? AND state = ?",
                (state, detail, " ".join(jobs), time.time(), sop_uid, WAITING),
            )

    def get(self, sop_uid: str) -> MarkRecord | None:
        row = self._conn().execute("SELECT * FROM marks WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return MarkRecord.from_row(row) if row else None

    def all(self) -> list[MarkRecord]:
        rows = self._conn().execute("SELECT * FROM marks ORDER BY updated DESC")
        return [MarkRecord.from_row(row) for row in rows]

    def forget_before(self, cutoff: float) -> int:
        """Drop settled records not touched since ``cutoff`` (retention)."""
        with transaction(self._conn()) as conn:
            cursor = conn.execute(
                "DELETE FROM marks WHERE state != ? AND updated < ?", (WAITING, cutoff)
            )
            return cursor.rowcount

    def close(self) -> None:
        self._conn.close()


def referenced_series_studies(ds: pydicom.Dataset) -> dict[str, str]:
    """Series UID -> study UID of every series a mark object names: a GSPS's Referenced
    Series Sequence (series of its own study), an SR's Current Requested Procedure Evidence
    and Pertinent Other Evidence (each under its study). What a retrieval asks the PACS for.
    Values that are not UIDs are passed over (they never become paths)."""
    own = ds.get("StudyInstanceUID", "")
    items = [(item, own) for item in ds.get("ReferencedSeriesSequence", [])]
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword, []):
            uid = study.get("StudyInstanceUID", "") or own
            items.extend((item, uid) for item in study.get("ReferencedSeriesSequence", []))
    found: dict[str, str] = {}
    for item, study in items:
        try:
            series = checked_uid(item.get("SeriesInstanceUID"), "SeriesInstanceUID")
        except UnsafeUidError:
            continue
        try:  # a bad study UID loses only the retrieval's study key, not the series
            found.setdefault(series, checked_uid(study, "StudyInstanceUID"))
        except UnsafeUidError:
            found.setdefault(series, "")
    return found


def referenced_series(ds: pydicom.Dataset) -> list[str]:
    """The series a mark object names (``referenced_series_studies``), in order."""
    return list(referenced_series_studies(ds))


def _frame_of_reference(files: Sequence[Path]) -> str:
    if not files:
        return ""
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return str(header.get("FrameOfReferenceUID", "") or "")


def marks_on_series(marks: Sequence[Mark], files: Sequence[Path]) -> list[Mark]:
    """The marks drawn on this spooled series: image marks on one of its instances (the
    spool names each file by its SOP Instance UID), patient-space marks in its frame of
    reference."""
    instances = {f.stem for f in files}
    frame = _frame_of_reference(files) if any(m.space == "patient" for m in marks) else ""
    return [
        m
        for m in marks
        if (m.space == "pixel" and m.sop_instance_uid in instances)
        or (m.space == "patient" and frame and m.frame_of_reference_uid == frame)
    ]


def mark_options(options: Any, job: Job, files: Sequence[Path], output: Path) -> Any:
    """``SegmentOptions`` for a prompt job: the marks of its object on its series instead of
    rule prompts, and the measurement report beside the SEG (``REPORT_FILE``)."""
    marks = marks_on_series(read_marks(job.mark_file), files)
    if not marks:
        raise PromptError(f"mark object {job.mark_uid} has no mark on series {job.series_uid}")
    return dataclasses.replace(
        options,
        marks=tuple(marks),
        prompts=(),
        report=Path(output).with_name(REPORT_FILE),
        series_description=MARK_SERIES_DESCRIPTION,
    )


@dataclass(frozen=True)
class _Read:
    """What one mark object holds: its marks and the series it references (with the study
    of each, for a retrieval)."""

    marks: tuple[Mark, ...]
    series: tuple[str, ...]
    studies: tuple[tuple[str, str], ...] = ()  # (series UID, study UID)


Deliveries = Callable[[tuple[str, ...], SeriesInfo], tuple[Delivery, ...]]


class MarkJobs:
    """Turns waiting mark objects into prompt jobs once their series are complete."""

    def __init__(
        self,
        config: ServerConfig,
        spool: Spool,
        tracker: SeriesTracker,
        inbox: MarkInbox,
        book: JobBook,
        *,
        enqueue: Callable[[str], None],
        deliveries: Deliveries,
        retrievals: RetrievalBook | None = None,
        retrieve_now: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.retrievals = retrievals  # with [retrieve]: series not here are asked for
        self.retrieve_now = retrieve_now  # wakes the retriever after a request
        self.spool = spool
        self.tracker = tracker
        self.inbox = inbox
        self.book = book
        self.enqueue = enqueue
        self.deliveries = deliveries
        self._read: dict[str, _Read] = {}  # waiting objects already read (housekeeping only)

    def path(self, record: MarkRecord) -> Path:
        return self.spool.series_dir(record.study_uid, record.series_uid) / (
            checked_uid(record.sop_uid, "SOPInstanceUID") + ".dcm"
        )

    def resolve(self, now: float | None = None) -> list[Job]:
        """One pass over the waiting mark objects; returns the prompt jobs made."""
        now = time.time() if now is None else now
        created: list[Job] = []
        for record in self.inbox.waiting():
            try:
                created.extend(self._resolve(record, now))
            except (MedsegError, OSError) as exc:  # this object's fault: say so, go on
                logger.warning("mark object %s rejected: %s", record.sop_uid, exc)
                self._settle(record, REJECTED, str(exc), ())
            except Exception:  # a bug, or the database busy: keep it waiting, try the others
                logger.exception("mark object %s: resolving failed", record.sop_uid)
        return created

    def _settle(self, record: MarkRecord, state: str, detail: str, jobs: Sequence[str]) -> None:
        self.inbox.settle(record.sop_uid, state, detail, jobs)
        self._read.pop(record.sop_uid, None)

    def _load(self, record: MarkRecord, path: Path) -> _Read:
        found = self._read.get(record.sop_uid)
        if found is None:
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
                raise DicomInputError(f"not a readable DICOM file ({type(exc).__name__})") from None
            try:
                marks = tuple(read_marks(path))
            except DicomInputError as exc:  # the message starts with the (spool) path
                raise DicomInputError(str(exc).removeprefix(f"{path}: ")) from None
            studies = referenced_series_studies(header)
            found = _Read(marks, tuple(studies), tuple(studies.items()))
            self._read[record.sop_uid] = found
        return found

    def _image_series(self, record: MarkRecord, marks: Sequence[Mark]) -> list[str]:
        """Spooled series of the study that hold an image some mark is drawn on."""
        study = self.spool.incoming / checked_uid(record.study_uid, "StudyInstanceUID")
        names = set()
        for mark in marks:
            if mark.space == "pixel" and mark.sop_instance_uid:
                try:
                    names.add(checked_uid(mark.sop_instance_uid, "SOPInstanceUID") + ".dcm")
                except UnsafeUidError:
                    continue
        if not names or not study.is_dir():
            return []
        return sorted(
            folder.name
            for folder in study.iterdir()
            if folder.is_dir() and any((folder / name).is_file() for name in names)
        )

    def _resolve(self, record: MarkRecord, now: float) -> list[Job]:
        path = self.path(record)
        try:
            read = self._load(record, path)
        except DicomInputError as exc:
            logger.warning("mark object %s rejected: %s", record.sop_uid, exc)
            self._settle(record, REJECTED, str(exc), ())
            return []
        targets = list(dict.fromkeys([*read.series, *self._image_series(record, read.marks)]))
        missing: list[str] = []
        arriving: list[str] = []
        ready: list[tuple[SeriesInfo, RuleConfig, int]] = []
        reasons: list[str] = []
        for uid in targets:
            series = self.tracker.get(uid)
            if series is None:
                missing.append(uid)
            elif series.state == RECEIVING:
                arriving.append(uid)
            elif series.is_image:
                files = self.spool.series_files(series.study_uid, uid)
                if not marks_on_series(read.marks, files):
                    reasons.append(f"series {uid} holds none of its marks")
                    continue
                rule = route(self.config.rules, series, len(files))
                if rule is None:
                    reasons.append(f"no rule matches series {uid}")
                elif not rule.marks:
                    reasons.append(f"rule {rule.name!r} takes no marks (marks = false)")
                else:
                    ready.append((series, rule, len(files)))
        retrieving: list[str] = []
        if missing and self.retrievals is not None:
            retrieving, not_retrieved = self._retrieve(
                self.retrievals, record, dict(read.studies), missing, now
            )
            reasons.extend(not_retrieved)
            missing = []
        wait = self.config.marks.wait_seconds
        if arriving or retrieving or (missing and now < record.received + wait):
            return []  # its series is on its way, or may still come
        if missing:
            reasons.append(
                f"references series {', '.join(missing)}, not held here "
                f"(gave up after {wait:.0f} s)"
            )
        if not targets:
            reasons.append(f"references no series medseg holds (gave up after {wait:.0f} s)")
        created = [self._job(record, path, series, rule) for series, rule, _ in ready]
        if not created:
            detail = "; ".join(reasons)
            logger.warning("mark object %s: no prompt job: %s", record.sop_uid, detail)
            self._settle(record, UNRESOLVED, detail, ())
            return []
        for (series, rule, slices), job in zip(ready, created, strict=True):
            logger.info(
                "mark object %s on series %s (%d instances): prompt job %s, rule %s",
                record.sop_uid,
                series.series_uid,
                slices,
                job.id,
                rule.name,
            )
        self._settle(record, SUBMITTED, "; ".join(reasons), [job.id for job in created])
        return created

    def _retrieve(
        self,
        book: RetrievalBook,
        record: MarkRecord,
        studies: dict[str, str],
        missing: list[str],
        now: float,
    ) -> tuple[list[str], list[str]]:
        """Ask the PACS for each missing series (once; again after a failed retrieval only
        for a mark that arrived since). Returns the series on their way and, for those that
        could not be retrieved, the reasons."""
        on_way: list[str] = []
        reasons: list[str] = []
        for uid in missing:
            item = book.get(uid)
            if item is None or (item.state == RETRIEVAL_FAILED and item.updated < record.received):
                item = book.request(studies.get(uid) or record.study_uid, uid, now)
                logger.info(
                    "mark object %s: series %s is not here; retrieving it from %s",
                    record.sop_uid,
                    uid,
                    describe_pacs(self.config.retrieve),
                )
                self.retrieve_now()
            if item.state in (RETRIEVAL_PENDING, RETRIEVAL_RUNNING):
                on_way.append(uid)
            elif item.state == RETRIEVAL_FAILED:
                reasons.append(
                    f"series {uid} could not be retrieved ({item.attempts} attempt(s)): "
                    f"{item.error}"
                )
            else:  # retrieved, yet no longer in the series table (removed since)
                reasons.append(f"series {uid} was retrieved but is no longer held here")
        return on_way, reasons

    def _job(self, record: MarkRecord, path: Path, series: SeriesInfo, rule: RuleConfig) -> Job:
        """The prompt job of ``record`` on ``series``: the SEG and the report go to each of
        the rule's destinations (``caller`` = who sent the mark)."""
        sender = dataclasses.replace(
            series, calling_ae=record.calling_ae, peer_host=record.peer_host
        )
        deliveries = tuple(
            dataclasses.replace(d, file=file)
            for d in self.deliveries(rule.destinations, sender)
            for file in (SEG_FILE, REPORT_FILE)
        )
        job = Job(
            id=mark_job_id(series.series_uid, record.sop_uid),
            series_uid=series.series_uid,
            study_uid=series.study_uid,
            rule=rule.name,
            model=rule.marks_model or rule.model,
            window=rule.window,
            threshold=rule.threshold,
            output_folder=rule.output_folder,
            mark_uid=record.sop_uid,
            mark_file=str(path),
            deliveries=deliveries,
        )
        if self.book.create(job):
            self.enqueue(job.id)
        return job


def mark_status(database: Path, limit: int = 5) -> dict[str, Any]:
    """Mark objects by state and the newest that gave no job, for ``medseg status``."""
    if not database.is_file():
        return {"counts": {}, "problems": []}
    inbox = MarkInbox(database)
    try:
        records = inbox.all()
    finally:
        inbox.close()
    counts = {state: sum(1 for r in records if r.state == state) for state in MARK_STATES}
    problems = [
        {
            "mark": r.sop_uid,
            "state": r.state,
            "detail": r.detail,
            "time": r.updated,
            "jobs": list(r.jobs),
        }
        for r in records
        if r.state in (UNRESOLVED, REJECTED)
    ]
    return {"counts": {k: v for k, v in counts.items() if v}, "problems": problems[:limit]}
