"""Series completion: a series is complete when nothing arrived for it for a while.

DICOM has no "end of series" message and a series may span several associations, so the
idle timer is the only signal. It is kept in SQLite, not in memory, so a series whose timer
was running when the service stopped still completes after a restart (Orthanc's StableAge
does not survive one). A late instance for a completed series reopens it; its next
completion is a new *epoch* and gets a new job. Each series records whether it holds
images (CT/MR storage classes): only those may become jobs.

The received files in the spool are the durable truth; the table is derived from them. It
is committed with ``synchronous=NORMAL`` (no fsync per instance: that would halve the
receive rate), which survives a crash of the process; after a power cut, ``recover`` puts
back any series folder the table lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from medseg.errors import DicomInputError
from medseg.server.sopclasses import is_image_class
from medseg.server.sqlite import PerThread, transaction
from medseg.server.uids import is_uid

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    body_part TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    peer_host TEXT NOT NULL DEFAULT '',
    received INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'receiving',
    job_id TEXT NOT NULL DEFAULT '',
    is_image INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS series_state ON series(state, last_seen);
"""

# Series states: still arriving; complete and handed to a job; complete, no rule matched;
# complete and kept for a reader's marks (its rule has automatic = false).
RECEIVING, SUBMITTED, UNMATCHED, HELD = "receiving", "submitted", "unmatched", "held"


class SeriesStudyConflictError(DicomInputError):
    """A SeriesInstanceUID arrived under a second StudyInstanceUID.

    The series table is keyed by series UID (jobs, completion and retention name a series
    by it), so the second study's instances are refused rather than mixed in or lost.
    """

    def __init__(self, series_uid: str, known_study: str, new_study: str) -> None:
        super().__init__(
            f"series {series_uid} already belongs to study {known_study}, not {new_study}"
        )


@dataclass(frozen=True)
class InstanceInfo:
    """What the listener learnt about one stored instance (no patient identifiers)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = ""
    body_part: str = ""
    description: str = ""
    calling_ae: str = ""
    peer_host: str = ""
    is_image: bool = False  # of an image storage class (CT/MR...), not SEG/PR/SR


@dataclass(frozen=True)
class SeriesInfo:
    """A series as the tracker knows it; ``epoch`` counts its completions so far."""

    series_uid: str
    study_uid: str
    modality: str
    body_part: str
    description: str
    calling_ae: str
    peer_host: str
    received: int
    first_seen: float
    last_seen: float
    epoch: int
    state: str
    job_id: str
    is_image: bool = False  # every instance so far of an image storage class

    @classmethod
    def from_row(cls, row: Any) -> SeriesInfo:
        data = dict(row)
        data["is_image"] = bool(data.get("is_image", 0))
        return cls(**data)


class SeriesTracker:
    """The series table: instance arrivals in, complete series out."""

    def __init__(self, database: Path) -> None:
        self.database = Path(database)
        self._conn = PerThread(self.database, synchronous="NORMAL")
        # Told the state of every series closed here (the web side's metrics); None: no one.
        self.on_closed: Callable[[str], None] | None = None
        conn = self._conn()
        conn.executescript(_SCHEMA)
        with transaction(conn):  # re-checked under the lock: another process may migrate
            columns = {row[1] for row in conn.execute("PRAGMA table_info(series)")}
            if "is_image" not in columns:  # a spool made before the column existed
                conn.execute("ALTER TABLE series ADD COLUMN is_image INTEGER NOT NULL DEFAULT 0")
                # Its series were all routable then; keep CT/MR ones so.
                conn.execute("UPDATE series SET is_image = 1 WHERE upper(modality) IN ('CT', 'MR')")

    def seen(self, info: InstanceInfo, now: float | None = None) -> None:
        """Record an arrival: (re)start the series' idle timer, reopen it if completed.

        Raises ``SeriesStudyConflictError`` (and records nothing) when the series is known
        under another study.
        """
        now = time.time() if now is None else now
        with transaction(self._conn()) as conn:
            row = conn.execute(
                "SELECT study_uid FROM series WHERE series_uid = ?", (info.series_uid,)
            ).fetchone()
            if row is not None and row[0] != info.study_uid:
                raise SeriesStudyConflictError(info.series_uid, row[0], info.study_uid)
            conn.execute(
                "INSERT INTO series (series_uid, study_uid, modality, body_part, description,"
                " calling_ae, peer_host, received, first_seen, last_seen, is_image)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
                " ON CONFLICT(series_uid) DO UPDATE SET received = received + 1,"
                " last_seen = excluded.last_seen, state = 'receiving',"
                " calling_ae = excluded.calling_ae, peer_host = excluded.peer_host,"
                " is_image = MIN(is_image, excluded.is_image)",
                (
                    info.series_uid,
                    info.study_uid,
                    info.modality,
                    info.body_part,
                    info.description,
                    info.calling_ae,
                    info.peer_host,
                    now,
                    now,
                    int(info.is_image),
                ),
            )

    def due(self, idle_seconds: float, now: float | None = None) -> list[SeriesInfo]:
        """Series still receiving whose last instance is older than ``idle_seconds``."""
        now = time.time() if now is None else now
        rows = self._conn().execute(
            "SELECT * FROM series WHERE state = ? AND last_seen <= ? ORDER BY last_seen",
            (RECEIVING, now - idle_seconds),
        )
        return [SeriesInfo.from_row(row) for row in rows]

    def close_epoch(self, series: SeriesInfo, state: str, job_id: str = "") -> bool:
        """Mark ``series`` handled (``state``) unless an instance arrived since it was read.

        Returns False when the series was reopened meanwhile: it stays receiving and will
        complete again later.
        """
        with transaction(self._conn()) as conn:
            cursor = conn.execute(
                "UPDATE series SET state = ?, job_id = ?, epoch = epoch + 1"
                " WHERE series_uid = ? AND state = ? AND last_seen = ?",
                (state, job_id, series.series_uid, RECEIVING, series.last_seen),
            )
            closed = cursor.rowcount == 1
        if closed and self.on_closed is not None:
            self.on_closed(state)
        return closed

    def get(self, series_uid: str) -> SeriesInfo | None:
        row = (
            self._conn()
            .execute("SELECT * FROM series WHERE series_uid = ?", (series_uid,))
            .fetchone()
        )
        return SeriesInfo.from_row(row) if row else None

    def expired(self, older_than: float) -> list[SeriesInfo]:
        """Handled series whose last arrival is older than ``older_than`` (retention)."""
        rows = self._conn().execute(
            "SELECT * FROM series WHERE state != ? AND last_seen < ?", (RECEIVING, older_than)
        )
        return [SeriesInfo.from_row(row) for row in rows]

    def forget(self, series_uid: str) -> None:
        with transaction(self._conn()) as conn:
            conn.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))

    def recover(self, incoming: Path, now: float | None = None) -> int:
        """Track every spooled series the table does not know (lost in a power cut).

        Its idle timer starts now; the calling AE is unknown, so a rule's ``caller``
        destination cannot be resolved for it (named destinations still apply).
        """
        recovered = 0
        for folder in sorted(p for p in Path(incoming).glob("*/*") if p.is_dir()):
            if not (is_uid(folder.parent.name) and is_uid(folder.name)):
                # not written by the listener (every name it makes is a checked UID)
                logger.warning("ignoring spool folder %s: its names are not UIDs", folder)
                continue
            if self.get(folder.name) is not None:
                continue
            files = sorted(folder.glob("*.dcm"))
            if not files:
                continue
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
            self.seen(
                InstanceInfo(
                    study_uid=folder.parent.name,
                    series_uid=folder.name,
                    sop_uid=files[0].stem,
                    modality=str(header.get("Modality", "") or ""),
                    body_part=str(header.get("BodyPartExamined", "") or ""),
                    description=str(header.get("SeriesDescription", "") or ""),
                    is_image=is_image_class(str(header.get("SOPClassUID", ""))),
                ),
                now,
            )
            recovered += 1
        return recovered

    def counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) FROM series GROUP BY state")
        return {row[0]: row[1] for row in rows}
