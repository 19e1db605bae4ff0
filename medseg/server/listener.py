"""The DICOM listener: a pynetdicom AE answering C-ECHO and C-STORE.

Connections pass the guard first (``guard.py``: TLS handshake and association request
in time and of bounded size, PDU lengths, per-address limit). Access control happens when
the association is requested (called AE title is ours, calling AE title on the allow list,
optionally from given source addresses). Each received instance is written to the spool
exactly as it was encoded, durably, before the success status is sent; every failure on the
way becomes one DIMSE status here:

- 0xC210 (cannot understand): the dataset does not decode, its pixel data is incomplete,
  or its UIDs are not UIDs (the request's own UIDs: ``commands.py``)
- 0xC212 (cannot understand): its SeriesInstanceUID already belongs to another study
- 0xA900 (dataset does not match SOP class): the dataset's SOP UIDs differ from the request
- 0xA700 (out of resources): the spool cannot take it (disk full, reserve reached, I/O)
- 0xC211 (pynetdicom's answer when a handler raises): a bug, logged with its traceback
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.utils import make_target

from medseg.errors import ConfigError
from medseg.server.completion import InstanceInfo, SeriesStudyConflictError, SeriesTracker
from medseg.server.config import ServerConfig
from medseg.server.guard import ConnectionLimits, GuardedServer
from medseg.server.markjobs import MarkInbox, MarkRecord, is_mark_class
from medseg.server.pixels import IncompletePixelDataError
from medseg.server.received import check_received_pixels, part10_prefix, read_received
from medseg.server.sopclasses import IMAGE_CLASSES, OTHER_CLASSES, is_image_class
from medseg.server.spool import Spool, SpoolFullError
from medseg.server.uids import UnsafeUidError, checked_uid

logger = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

CANNOT_UNDERSTAND = 0xC210
SERIES_IN_OTHER_STUDY = 0xC212
NOT_MATCHING = 0xA900
OUT_OF_RESOURCES = 0xA700
SUCCESS = 0x0000


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


class StoreHandler:
    """The C-STORE handler: decode the header, check it, spool the encoded bytes, track.

    Only the elements before and after the pixel data are decoded; the pixel data is
    measured where it lies in the received bytes (``received.py``), and those bytes are
    written to the spool behind a preamble and file meta naming their transfer syntax.

    A presentation state or SR (which may hold a reader's marks) is also recorded in the
    ``marks`` inbox, when one is given, before success is answered.
    """

    def __init__(
        self, spool: Spool, tracker: SeriesTracker, marks: MarkInbox | None = None
    ) -> None:
        self.spool = spool
        self.tracker = tracker
        self.marks = marks

    def __call__(self, event: Any) -> int | Dataset:
        # who sent it: the caller of an association we accepted, or the PACS answering our
        # own C-GET (medseg retrieving a series: medseg.server.retrieve)
        sender = event.assoc.acceptor if event.assoc.is_requestor else event.assoc.requestor
        calling = sender.ae_title
        transfer_syntax = event.context.transfer_syntax
        try:
            encoded = event.request.DataSet.getvalue()
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
                calling_ae=calling,
                peer_host=str(sender.address),
                is_image=is_image_class(event.request.AffectedSOPClassUID),
            )
            check_received_pixels(received, transfer_syntax, is_image=info.is_image)
        except (UnsafeUidError, IncompletePixelDataError) as exc:
            logger.warning("refused an instance from %s: %s", calling, exc)
            return _status(CANNOT_UNDERSTAND, str(exc))
        except Exception as exc:  # the network boundary: any decode failure is a status
            logger.warning("refused an undecodable instance from %s: %s", calling, exc)
            return _status(CANNOT_UNDERSTAND, f"cannot decode dataset: {exc}")
        if sop != event.request.AffectedSOPInstanceUID:
            return _status(NOT_MATCHING, "SOPInstanceUID differs from the C-STORE request")
        path = None
        try:
            known = self.tracker.get(series)
            if known is not None and known.study_uid != study:
                raise SeriesStudyConflictError(series, known.study_uid, study)
            path = self.spool.store(encoded, study, series, sop, prefix=part10_prefix(event))
            self.tracker.seen(info)
            sop_class = str(event.request.AffectedSOPClassUID)
            if self.marks is not None and is_mark_class(sop_class):
                self.marks.received(
                    MarkRecord(sop, study, series, sop_class, calling, info.peer_host)
                )
                logger.info("mark object %s from %s: waiting for its series", sop, calling)
        except SeriesStudyConflictError as exc:
            if path is not None:  # another association won the race: keep its study only
                self.spool.remove_instance(path)
            logger.warning("refused instance %s from %s: %s", sop, calling, exc)
            return _status(SERIES_IN_OTHER_STUDY, "series UID already used by another study")
        except SpoolFullError as exc:
            logger.error("spool full, refusing instance %s: %s", sop, exc)
            return _status(OUT_OF_RESOURCES, str(exc))
        except (OSError, sqlite3.Error) as exc:  # e.g. the series database on a full disk
            logger.error("cannot record instance %s: %s", sop, exc)
            return _status(OUT_OF_RESOURCES, f"cannot record instance: {exc}")
        logger.debug("stored %s of series %s from %s", sop, series, calling)
        return SUCCESS


class AccessControl:
    """Rejects associations called for another AE title, or from calling AEs (or source
    addresses) not on the allow list."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    def called_ok(self, called: str) -> bool:
        return self.config.listener.allow_any_called_ae or called == self.config.listener.ae_title

    def allowed(self, ae_title: str, address: str) -> bool:
        if self.config.listener.allow_any_ae:
            return True
        peer = self.config.peer(ae_title.strip())
        return peer is not None and (not peer.addresses or address in peer.addresses)

    def __call__(self, event: Any) -> None:
        assoc = event.assoc
        ae_title = assoc.requestor.primitive.calling_ae_title.strip()
        called = assoc.requestor.primitive.called_ae_title.strip()
        address = str(assoc.requestor.address)
        if not self.called_ok(called):
            logger.warning(
                "rejected association from %s at %s: called AE %r is not %r",
                ae_title,
                address,
                called,
                self.config.listener.ae_title,
            )
            assoc.acse.send_reject(0x01, 0x01, 0x07)  # permanent, service user, called AE
            assoc.kill()
        elif not self.allowed(ae_title, address):
            logger.warning("rejected association from %s at %s: not allowed", ae_title, address)
            assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, service user, calling AE
            assoc.kill()


def build_ae(config: ServerConfig) -> AE:
    """The acceptor AE with the configured limits and the storage contexts."""
    listener = config.listener
    ae = AE(ae_title=listener.ae_title)
    ae.maximum_pdu_size = listener.max_pdu
    ae.network_timeout = listener.network_timeout
    ae.acse_timeout = listener.acse_timeout
    ae.dimse_timeout = listener.dimse_timeout
    ae.maximum_associations = listener.max_associations
    ae.add_supported_context(Verification)
    for sop_class in (*IMAGE_CLASSES, *OTHER_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    return ae


def connection_limits(config: ServerConfig) -> ConnectionLimits:
    listener = config.listener
    return ConnectionLimits(
        max_pdu=listener.max_pdu,
        acse_timeout=listener.acse_timeout,
        network_timeout=listener.network_timeout,
        max_connections_per_ip=listener.max_connections_per_ip,
    )


def start_listener(
    config: ServerConfig,
    spool: Spool,
    tracker: SeriesTracker,
    ssl_context: ssl.SSLContext | None = None,
    marks: MarkInbox | None = None,
) -> GuardedServer:
    """Start listening in background threads; stop it with ``server.shutdown()``.

    With ``marks``, received presentation states and SRs are recorded there to become
    prompt jobs (``markjobs.py``)."""
    ae = build_ae(config)
    handlers = [
        (evt.EVT_REQUESTED, AccessControl(config)),
        (evt.EVT_C_STORE, StoreHandler(spool, tracker, marks)),
    ]
    address = (config.listener.host, config.listener.port)
    try:
        server = ae.make_server(
            address,
            ssl_context=ssl_context,
            evt_handlers=handlers,
            server_class=GuardedServer,
            limits=connection_limits(config),
        )
    except OSError as exc:
        raise ConfigError(
            f"listener: cannot listen on {address[0]}:{address[1]}: {exc.strerror}"
        ) from exc
    thread = threading.Thread(target=make_target(server.serve_forever), name="AcceptorServer")
    thread.daemon = True
    thread.start()
    ae._servers.append(server)  # so that server.shutdown() finds it, as ae.start_server does
    logger.info(
        "listening as %s on %s:%s%s",
        config.listener.ae_title,
        *server.server_address[:2],
        " (TLS)" if ssl_context else "",
    )
    return server
