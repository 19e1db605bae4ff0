"""C-STORE requests whose command set carries an invalid UID get a failure status of their own.

pynetdicom turns a received command set into a request object that validates every UID:
an Affected SOP Instance UID over 64 characters raises there and aborts the whole
association (the rest of the series is lost), and an empty one makes a request pynetdicom
drops without an answer (the sender waits out its timeout). The check here runs first and
answers such a request with 0xC210 itself, so only that instance is refused.

A command set that does not decode at all (no CommandField, a broken element: found by
``benchmarks/fuzz_dicom.py``) made pynetdicom's state machine raise in the association's
reactor thread, which died with a traceback and left the peer waiting; it now aborts that
association with one warning, as pynetdicom does for a PDU it cannot decode.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA

from medseg.dicom.files import UNREADABLE, reason_of
from medseg.server.uids import UnsafeUidError, checked_uid

logger = logging.getLogger(__name__)

CANNOT_UNDERSTAND = 0xC210
_CHECKED = ("AffectedSOPClassUID", "AffectedSOPInstanceUID")


def _already_decoded(primitive: Any, assoc: Any = None) -> bool:
    return True


def command_problem(message: DIMSEMessage) -> str | None:
    """Why a complete C-STORE-RQ cannot be represented (a UID that is no UID), or None."""
    if not isinstance(message, C_STORE_RQ):
        return None
    for keyword in _CHECKED:
        try:
            checked_uid(message.command_set.get(keyword), keyword)
        except UnsafeUidError as exc:
            return str(exc)
    return None


class CheckedDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider with the command-set check in front (DUL thread)."""

    def receive_primitive(self, primitive: P_DATA) -> None:
        try:
            self._receive(primitive)
        except UNREADABLE as exc:  # peer-made bytes: the association ends, the server goes on
            self.message = None
            self._abort(reason_of(exc))

    def _receive(self, primitive: P_DATA) -> None:
        if self.message is None:
            self.message = DIMSEMessage()
        message = self.message
        if not message.decode_msg(primitive, self.assoc):
            return  # more fragments to come
        problem = command_problem(message)
        if problem is None or message.command_set.get("MessageID") is None:
            # Sound (or unanswerable: pynetdicom aborts): it goes on without decoding twice.
            message.decode_msg = _already_decoded  # type: ignore[method-assign]
            super().receive_primitive(primitive)
            return
        self.message = None
        self._refuse(message, problem)

    def _abort(self, reason: str) -> None:
        """A-ABORT (service provider) and stop the association, from its reactor thread.

        The same steps pynetdicom takes for an exception in its reactor: send the A-ABORT
        directly (the state machine is mid-action) and tell both loops to end.
        """
        assoc = self.assoc
        logger.warning(
            "aborted the association with %s at %s: undecodable DIMSE message: %s",
            assoc.requestor.ae_title,
            assoc.requestor.address,
            reason,
        )
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        with contextlib.suppress(OSError, AttributeError):
            assoc.dul.socket.send(abort.encode())
        assoc.is_aborted = True
        assoc.is_established = False
        assoc._kill = True
        assoc.dul._kill_thread = True

    def _refuse(self, message: DIMSEMessage, problem: str) -> None:
        command = message.command_set
        logger.warning("refused a C-STORE from %s: %s", self.assoc.requestor.ae_title, problem)
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = command.MessageID
        for keyword in _CHECKED:  # echo only what is valid (both are optional in a response)
            with contextlib.suppress(UnsafeUidError):
                setattr(rsp, keyword, checked_uid(command.get(keyword), keyword))
        rsp.Status = CANNOT_UNDERSTAND
        rsp.ErrorComment = f"invalid command: {problem}"[:64]
        self.send_msg(rsp, message.context_id)
