"""C-STORE requests whose command set carries an invalid UID get a failure status of their own.

pynetdicom turns a received command set into a request object that validates every UID:
an Affected SOP Instance UID over 64 characters raises there and aborts the whole
association (the rest of the series is lost), and an empty one makes a request pynetdicom
drops without an answer (the sender waits out its timeout). The check here runs first and
answers such a request with 0xC210 itself, so only that instance is refused.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

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
