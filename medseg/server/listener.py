"""The DICOM listener: a pynetdicom AE answering C-ECHO and C-STORE.

Connections pass the guard first (``guard.py``: TLS handshake and association request
in time and of bounded size, PDU lengths, per-address limit). Access control happens when
the association is requested (called AE title is ours, calling AE title on the allow list,
optionally from given source addresses). Each received instance goes through
``ingest.InstanceStore`` (the path STOW-RS takes too): written to the spool exactly as it
was encoded, durably, before the success status is sent; every failure on the way becomes
one DIMSE status (listed there; the request's own UIDs are checked in ``commands.py``).
0xC211 (pynetdicom's answer when a handler raises) is a bug, logged with its traceback.
"""

from __future__ import annotations

import logging
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
from medseg.server.completion import SeriesTracker
from medseg.server.config import ServerConfig
from medseg.server.guard import ConnectionLimits, GuardedServer
from medseg.server.ingest import (
    CANNOT_UNDERSTAND,
    NOT_MATCHING,
    OUT_OF_RESOURCES,
    SERIES_IN_OTHER_STUDY,
    SUCCESS,
    InstanceStore,
    Sender,
)
from medseg.server.markjobs import MarkInbox
from medseg.server.received import part10_prefix
from medseg.server.sopclasses import IMAGE_CLASSES, OTHER_CLASSES
from medseg.server.spool import Spool

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

__all__ = [
    "CANNOT_UNDERSTAND",
    "NOT_MATCHING",
    "OUT_OF_RESOURCES",
    "SERIES_IN_OTHER_STUDY",
    "SUCCESS",
    "TRANSFER_SYNTAXES",
    "StoreHandler",
    "start_listener",
]


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


class StoreHandler:
    """The C-STORE handler: the instance goes through ``ingest.InstanceStore`` (checked,
    spooled durably, tracked) and its outcome becomes the DIMSE status.

    The bytes are written to the spool behind a preamble and file meta naming the
    request's SOP class and instance and its presentation context's transfer syntax.
    """

    def __init__(
        self, spool: Spool, tracker: SeriesTracker, marks: MarkInbox | None = None
    ) -> None:
        self.instances = InstanceStore(spool, tracker, marks)

    def __call__(self, event: Any) -> int | Dataset:
        # who sent it: the caller of an association we accepted, or the PACS answering our
        # own C-GET (medseg retrieving a series: medseg.server.retrieve)
        peer = event.assoc.acceptor if event.assoc.is_requestor else event.assoc.requestor
        outcome = self.instances.store(
            event.request.DataSet.getvalue(),
            event.context.transfer_syntax,
            sop_class=str(event.request.AffectedSOPClassUID),
            sop_instance=str(event.request.AffectedSOPInstanceUID),
            sender=Sender(peer.ae_title, str(peer.address)),
            prefix=part10_prefix(event),
        )
        if outcome.ok:
            return SUCCESS
        return _status(outcome.status, outcome.comment)


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
