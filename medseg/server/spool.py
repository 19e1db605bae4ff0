"""Durable ingest: an instance is on disk (temp file, fsync, rename) before success is answered.

Layout under the spool root, every path component a checked UID::

    incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    outbox/<job id>/seg.dcm
    medseg.db                       series and (embedded mode) job records
    huey.db                         the embedded queue

A received instance is written as the peer encoded it (no decode and re-encode), so the
spool keeps exactly what the PACS sent. Writing the same instance twice replaces it with
identical bytes: duplicates are idempotent.

Instances arriving at once on several associations share their flushes (group commit,
``medseg.durable.GroupCommit``): each is still durable before ``store`` returns, i.e.
before its success is answered, but a batch costs two flushes, not two per instance.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from medseg.durable import GroupCommit, write_bytes
from medseg.errors import OutputError
from medseg.server.uids import checked_uid

logger = logging.getLogger(__name__)


class SpoolFullError(OutputError):
    """The spool cannot take the instance (disk full, below the free-space reserve, I/O error)."""


DATABASE_NAME = "medseg.db"


class Spool:
    """The spool folder: received series, outbox, databases."""

    def __init__(
        self,
        root: Path,
        *,
        min_free_bytes: int = 0,
        fsync: bool = True,
        free_bytes: Callable[[Path], int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.outbox = self.root / "outbox"
        self.min_free_bytes = int(min_free_bytes)
        self.fsync = fsync
        self._free_bytes = free_bytes or (lambda p: shutil.disk_usage(p).free)
        self._commit: GroupCommit | None = None
        for folder in (self.root, self.incoming, self.outbox):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create spool folder {folder}: {exc}") from exc
        if fsync:
            self._commit = GroupCommit(self.incoming)

    @property
    def database(self) -> Path:
        return self.root / DATABASE_NAME

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        study = checked_uid(study_uid, "StudyInstanceUID")
        series = checked_uid(series_uid, "SeriesInstanceUID")
        return self.incoming / study / series

    def store(
        self,
        encoded: bytes | memoryview,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        *,
        prefix: bytes = b"",
    ) -> Path:
        """Durably store one instance, ``prefix + encoded`` (DICOM file format bytes: the
        preamble and file meta as ``prefix`` save joining them to the data set); returns
        its path.

        Raises ``UnsafeUidError`` for a UID that is not a UID and ``SpoolFullError`` when the
        spool cannot take it; in both cases nothing is left behind.
        """
        folder = self.series_dir(study_uid, series_uid)
        name = checked_uid(sop_uid, "SOPInstanceUID") + ".dcm"
        size = len(prefix) + len(encoded)
        try:
            free = self._free_bytes(self.root)
        except OSError as exc:
            raise SpoolFullError(f"spool {self.root} is not usable: {exc}") from exc
        if free - size < self.min_free_bytes:
            raise SpoolFullError(
                f"spool {self.root} has {free // 2**20} MiB free, below the reserve of "
                f"{self.min_free_bytes // 2**20} MiB"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if self._commit is not None:
                self._commit.write_bytes(folder / name, encoded, prefix=prefix)
            else:
                write_bytes(folder / name, bytes(prefix) + bytes(encoded), fsync=False)
        except OSError as exc:
            raise SpoolFullError(
                f"cannot write to spool {self.root}: {exc.strerror or exc}"
            ) from exc
        return folder / name

    def remove_instance(self, path: Path) -> None:
        """Take back one stored instance (refused after it was written)."""
        path.unlink(missing_ok=True)
        for folder in (path.parent, path.parent.parent):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def series_files(self, study_uid: str, series_uid: str) -> list[Path]:
        folder = self.series_dir(study_uid, series_uid)
        return sorted(folder.glob("*.dcm")) if folder.is_dir() else []

    def job_dir(self, job_id: str) -> Path:
        return self.outbox / checked_uid(job_id, "job id")

    def remove_series(self, study_uid: str, series_uid: str) -> None:
        folder = self.series_dir(study_uid, series_uid)
        shutil.rmtree(folder, ignore_errors=True)
        study = folder.parent
        if study.is_dir() and not any(study.iterdir()):
            study.rmdir()

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
