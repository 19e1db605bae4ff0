"""Checking and storing one received instance: the path every instance takes, whether it
came by C-STORE (``listener.py``) or by STOW-RS (``web/stow.py``).

The instance's bytes are checked (header decodes, UIDs are UIDs, pixel data complete, its
SOP Instance UID is the one its envelope names), written to the spool exactly as encoded,
durably (fsync) before success is answered, and counted by the series tracker, which
completes the series and routes it. Every failure on the way becomes one DIMSE status code,
the same for both ways in:

- 0xC210 (cannot understand): the dataset does not decode, its pixel data is incomplete,
  or its UIDs are not UIDs
- 0xC212 (cannot understand): its SeriesInstanceUID already belongs to another study
- 0xA900 (dataset does not match SOP class): the dataset's SOP Instance UID differs from
  the one its envelope names (the C-STORE request, the STOW-RS part's file meta), or its
  study from the one a STOW-RS request names
- 0xA700 (out of resources): the spool cannot take it (disk full, reserve reached, I/O)
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from pydicom.uid import UID

from medseg.server.completion import InstanceInfo, SeriesStudyConflictError, SeriesTracker
from medseg.server.markjobs import MarkInbox, MarkRecord, is_mark_class
from medseg.server.pixels import IncompletePixelDataError
from medseg.server.received import check_received_pixels, read_received
from medseg.server.sopclasses import is_image_class
from medseg.server.spool import Spool, SpoolFullError
from medseg.server.uids import UnsafeUidError, checked_uid

logger = logging.getLogger(__name__)

CANNOT_UNDERSTAND = 0xC210
SERIES_IN_OTHER_STUDY = 0xC212
NOT_MATCHING = 0xA900
OUT_OF_RESOURCES = 0xA700
SUCCESS = 0x0000


@dataclass(frozen=True)
class Sender:
    """Who sent an instance: a calling AE title (empty for STOW-RS) and an address."""

    ae_title: str
    host: str


@dataclass(frozen=True)
class StoreOutcome:
    """The answer for one instance: a DIMSE status code, a comment for a failure, and the
    UIDs read from it (empty where it did not decode that far)."""

    status: int
    comment: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


class InstanceStore:
    """Checks, spools and tracks received instances.

    A presentation state or SR (which may hold a reader's marks) is also recorded in the
    ``marks`` inbox, when one is given, before success is answered.
    """

    def __init__(
        self, spool: Spool, tracker: SeriesTracker, marks: MarkInbox | None = None
    ) -> None:
        self.spool = spool
        self.tracker = tracker
        self.marks = marks

    def store(
        self,
        encoded: bytes,
        transfer_syntax: UID,
        *,
        sop_class: str,
        sop_instance: str,
        sender: Sender,
        prefix: bytes,
        study_instance: str = "",
    ) -> StoreOutcome:
        """Check ``encoded`` (a data set in ``transfer_syntax``, without file meta) and
        store ``prefix + encoded`` durably; ``sop_class``/``sop_instance`` are what its
        envelope names, ``prefix`` the preamble and file meta to write before it;
        ``study_instance``, when given, the study the instance must belong to (STOW-RS to
        ``/studies/{study}``).

        Only the elements before and after the pixel data are decoded; the pixel data is
        measured where it lies in the received bytes (``received.py``).
        """
        calling = sender.ae_title or sender.host
        try:
            received = read_received(encoded, transfer_syntax)
            dataset = received.header  # every element but the pixel data's bytes
            study = checked_uid(dataset.get("StudyInstanceUID"), "StudyInstanceUID")
            series = checked_uid(dataset.get("SeriesInstanceUID"), "SeriesInstanceUID")
            sop = checked_uid(dataset.get("SOPInstanceUID"), "SOPInstanceUID")
            info = InstanceInfo(
                study_uid=study,
                series_uid=series,
                sop_uid=sop,
                modality=str(dataset.get("Modality", "") or ""),
                body_part=str(dataset.get("BodyPartExamined", "") or ""),
                description=str(dataset.get("SeriesDescription", "") or ""),
                calling_ae=sender.ae_title,
                peer_host=sender.host,
                is_image=is_image_class(sop_class),
            )
            check_received_pixels(received, transfer_syntax, is_image=info.is_image)
        except (UnsafeUidError, IncompletePixelDataError) as exc:
            logger.warning("refused an instance from %s: %s", calling, exc)
            return StoreOutcome(CANNOT_UNDERSTAND, str(exc))
        except Exception as exc:  # the network boundary: any decode failure is a status
            logger.warning("refused an undecodable instance from %s: %s", calling, exc)
            return StoreOutcome(CANNOT_UNDERSTAND, f"cannot decode dataset: {exc}")
        uids = {"study_uid": study, "series_uid": series, "sop_uid": sop}
        if sop != sop_instance:
            return StoreOutcome(NOT_MATCHING, "SOPInstanceUID differs from the request", **uids)
        if study_instance and study != study_instance:
            return StoreOutcome(NOT_MATCHING, "StudyInstanceUID differs from the request", **uids)
        path = None
        try:
            known = self.tracker.get(series)
            if known is not None and known.study_uid != study:
                raise SeriesStudyConflictError(series, known.study_uid, study)
            path = self.spool.store(encoded, study, series, sop, prefix=prefix)
            self.tracker.seen(info)
            if self.marks is not None and is_mark_class(sop_class):
                self.marks.received(
                    MarkRecord(sop, study, series, sop_class, sender.ae_title, sender.host)
                )
                logger.info("mark object %s from %s: waiting for its series", sop, calling)
        except SeriesStudyConflictError as exc:
            if path is not None:  # another association won the race: keep its study only
                self.spool.remove_instance(path)
            logger.warning("refused instance %s from %s: %s", sop, calling, exc)
            return StoreOutcome(
                SERIES_IN_OTHER_STUDY, "series UID already used by another study", **uids
            )
        except SpoolFullError as exc:
            logger.error("spool full, refusing instance %s: %s", sop, exc)
            return StoreOutcome(OUT_OF_RESOURCES, str(exc), **uids)
        except (OSError, sqlite3.Error) as exc:  # e.g. the series database on a full disk
            logger.error("cannot record instance %s: %s", sop, exc)
            return StoreOutcome(OUT_OF_RESOURCES, f"cannot record instance: {exc}", **uids)
        logger.debug("stored %s of series %s from %s", sop, series, calling)
        return StoreOutcome(SUCCESS, **uids)
