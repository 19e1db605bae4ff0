"""What the dashboard and ``/api/`` show: ``medseg status``'s snapshot plus the job table.

Both come from ``medseg.server.status`` (the same reads as ``medseg status``); this module
only adds what a web page needs on top: links to a job's preview and result files, and,
with ``[web] show_patient = true`` only, the patient's name and ID from the spooled header.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from medseg.server.config import ServerConfig
from medseg.server.jobs import PREVIEW_FILE, REPORT_FILE, SEG_FILE
from medseg.server.spool import Spool
from medseg.server.status import collect_jobs, collect_status

logger = logging.getLogger(__name__)

# What a job's outbox folder may serve, by the name in the URL: (file, media type).
RESULT_FILES = {
    "preview.png": (PREVIEW_FILE, "image/png"),
    "seg.dcm": (SEG_FILE, "application/dicom"),
    "report.sr.dcm": (REPORT_FILE, "application/dicom"),
}


class Patients:
    """PatientName / PatientID of a series, read once from one of its spooled headers."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._known: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def of(self, study_uid: str, series_uid: str) -> dict[str, str]:
        with self._lock:
            if series_uid in self._known:
                return self._known[series_uid]
        found = {"name": "", "id": ""}
        for path in self.spool.series_files(study_uid, series_uid)[:1]:
            try:
                header = pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"]
                )
            except (OSError, InvalidDicomError) as exc:
                logger.debug("no patient header for series %s: %s", series_uid, exc)
                continue
            found = {
                "name": str(header.get("PatientName", "")),
                "id": str(header.get("PatientID", "")),
            }
        with self._lock:
            self._known[series_uid] = found
        return found


def job_links(spool: Spool, job: dict[str, Any]) -> dict[str, str]:
    """URLs of the files a job left in its outbox (a finished job: preview, SEG, report)."""
    folder = Path(spool.job_dir(job["id"]))
    links = {}
    for name, (file, _) in RESULT_FILES.items():
        if (folder / file).is_file() and (file != SEG_FILE or job["seg_uid"]):
            links[name] = f"/jobs/{job['id']}/{name}"
    return links


def snapshot(config: ServerConfig, spool: Spool, patients: Patients | None) -> dict[str, Any]:
    """The dashboard's data: the status summary and the newest jobs with their links."""
    status = collect_status(config)
    jobs = collect_jobs(config, limit=config.web.jobs_shown)
    for job in jobs:
        job["links"] = job_links(spool, job)
        if patients is not None:
            job["patient"] = patients.of(job["study"], job["series"])
    return {
        "time": status["time"],
        "status": status,
        "jobs": jobs,
        "show_patient": patients is not None,
        "refresh_seconds": config.web.refresh_seconds,
    }
