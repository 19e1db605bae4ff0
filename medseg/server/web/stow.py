"""STOW-RS in (DICOM PS3.18 section 10.5): ``POST /dicomweb/studies[/{study}]``.

The body is ``multipart/related; type="application/dicom"``; each part is a DICOM file
(PS3.10: preamble, ``DICM``, file meta, data set). Each part's data set takes the same path
as a C-STORE instance (``medseg.server.ingest.InstanceStore``: the same checks, written
durably before the answer, counted by the series tracker that completes and routes the
series), with the part's file meta in the place of the C-STORE request: its Media Storage
SOP Class UID must be a class the listener accepts (else 0x0122, the status PS3.18 names
for it), its transfer syntax one the listener accepts (else 0xC210), and its Media Storage
SOP Instance UID the data set's (else 0xA900). With a study in the path, an instance of
another study fails with 0xA900 too.

The answer is a DICOM JSON data set: ReferencedSOPSequence (0008,1199) for the instances
stored, FailedSOPSequence (0008,1198) with FailureReason (0008,1197) for the others; HTTP
200 when all were stored, 202 when some failed, 409 when none was stored.

The body is read into memory (``app.py``: ``_read_body``) within ``[web] max_stow_mb`` for
all requests together (413 for a body larger than that, also when its Content-Length
announces more; 503 when other bodies hold the rest; 408 for a client that stalls), so
hostile clients cannot exhaust memory; each part is copied out of it while it is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from io import BytesIO
from typing import Any

from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from medseg.server.ingest import (
    CANNOT_UNDERSTAND,
    InstanceStore,
    Sender,
    StoreOutcome,
)
from medseg.server.listener import TRANSFER_SYNTAXES
from medseg.server.sopclasses import IMAGE_CLASSES, OTHER_CLASSES
from medseg.server.uids import is_uid

logger = logging.getLogger(__name__)

DICOM_MEDIA = "application/dicom"
RESPONSE_MEDIA = "application/dicom+json"
CLASS_NOT_SUPPORTED = 0x0122  # PS3.18 table 10.5.3-2: "Referenced SOP Class not supported"
ACCEPTED_CLASSES = frozenset(str(c) for c in (*IMAGE_CLASSES, *OTHER_CLASSES))
ACCEPTED_SYNTAXES = frozenset(str(s) for s in TRANSFER_SYNTAXES)
_META_MAX = 1 << 16  # bytes of a part read to find its file meta


class StowRequestError(Exception):
    """A request refused as a whole: its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PartOutcome:
    """One part's answer: the instance store's outcome and the SOP class it named."""

    outcome: StoreOutcome
    sop_class: str
    sop_instance: str


def boundary_of(content_type: str) -> str:
    """The multipart boundary of a STOW-RS request; ``StowRequestError(415)`` when the
    content type is not ``multipart/related`` of ``application/dicom`` parts."""
    message = Message()
    message["content-type"] = content_type
    if message.get_content_type() != "multipart/related":
        raise StowRequestError(415, f"expected multipart/related, got {content_type!r}")
    kind = message.get_param("type")
    if kind is not None and str(kind).lower() != DICOM_MEDIA:
        raise StowRequestError(415, f'expected type="{DICOM_MEDIA}", got {kind!r}')
    boundary = message.get_boundary()
    if not boundary:
        raise StowRequestError(400, "multipart/related without a boundary")
    return boundary


def split_parts(body: bytes | bytearray, boundary: str) -> Iterator[tuple[Message, memoryview]]:
    """The parts of a multipart body (RFC 2046): each part's headers and a view of its
    bytes (no copy)."""
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    start = body.find(delimiter)
    if start < 0:
        raise StowRequestError(400, "no multipart boundary in the body")
    while True:
        start += len(delimiter)
        if body[start : start + 2] == b"--":  # the close delimiter
            return
        line_end = body.find(b"\r\n", start)
        if line_end < 0:
            raise StowRequestError(400, "multipart body cut short")
        header_end = body.find(b"\r\n\r\n", line_end)
        if header_end == line_end:  # no headers at all
            headers_raw = b""
            data_start = line_end + 4
        elif header_end < 0:
            raise StowRequestError(400, "multipart part without the end of its headers")
        else:
            headers_raw = body[line_end + 2 : header_end]
            data_start = header_end + 4
        end = body.find(b"\r\n" + delimiter, data_start)
        if end < 0:
            raise StowRequestError(400, "multipart body without its close delimiter")
        headers = Message()
        for line in headers_raw.decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip()] = value.strip()
        yield headers, view[data_start:end]
        start = end + 2


def store_part(
    instances: InstanceStore, headers: Message, part: memoryview, sender: Sender, study: str
) -> PartOutcome:
    """Check and store one part (a PS3.10 file); ``study``: the path's study UID or ''."""
    kind = headers.get_content_type() if headers.get("content-type") else DICOM_MEDIA
    if kind != DICOM_MEDIA:
        return _failed(CANNOT_UNDERSTAND, f"part of type {kind}, not {DICOM_MEDIA}")
    try:
        head = bytes(part[:_META_MAX])
        if head[128:132] != b"DICM":
            raise ValueError("not a DICOM file (no DICM prefix)")
        stream = BytesIO(head)
        stream.seek(132)
        meta = read_dataset(stream, False, True, stop_when=lambda tag, vr, n: tag.group != 2)
        offset = stream.tell()
        if offset >= len(head) and len(part) > len(head):
            raise ValueError(f"file meta longer than {_META_MAX} bytes")
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        sop_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception as exc:  # the network boundary: any decode failure is a status
        return _failed(CANNOT_UNDERSTAND, f"cannot read the file meta: {exc}")
    if sop_class not in ACCEPTED_CLASSES:
        reason = f"SOP class {sop_class[:64]!r} not accepted"
        return _failed(CLASS_NOT_SUPPORTED, reason, sop_class, sop_instance)
    if syntax not in ACCEPTED_SYNTAXES:
        reason = f"transfer syntax {syntax[:64]!r} not accepted"
        return _failed(CANNOT_UNDERSTAND, reason, sop_class, sop_instance)
    if not is_uid(sop_instance):  # as commands.py answers a C-STORE request's own UIDs
        reason = f"MediaStorageSOPInstanceUID {sop_instance[:70]!r} is not a valid DICOM UID"
        return _failed(CANNOT_UNDERSTAND, reason, sop_class, sop_instance)
    transfer_syntax = UID(syntax)
    prefix = b"\x00" * 128 + b"DICM"
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop_instance),
        transfer_syntax=transfer_syntax,
    )
    prefix += encode_file_meta(meta)
    outcome = instances.store(
        bytes(part[offset:]),
        transfer_syntax,
        sop_class=sop_class,
        sop_instance=sop_instance,
        sender=sender,
        prefix=prefix,
        study_instance=study,
    )
    return PartOutcome(outcome, sop_class, sop_instance)


def _failed(status: int, reason: str, sop_class: str = "", sop_instance: str = "") -> PartOutcome:
    logger.warning("STOW-RS: refused a part: %s", reason)
    return PartOutcome(StoreOutcome(status, reason), sop_class, sop_instance)


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def stow_response(results: list[PartOutcome], base_url: str, study: str) -> dict[str, Any]:
    """The PS3.18 store instances response (DICOM JSON) for ``results``."""
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for result in results:
        outcome = result.outcome
        item: dict[str, Any] = {}
        # a UID that is not one (the reason a part failed, perhaps) is left out
        if is_uid(result.sop_class):
            item["00081150"] = _element("UI", result.sop_class)
        if is_uid(result.sop_instance):
            item["00081155"] = _element("UI", result.sop_instance)
        if outcome.ok:
            url = (
                f"{base_url}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                f"/instances/{outcome.sop_uid}"
            )
            item["00081190"] = _element("UR", url)
            stored.append(item)
        else:
            item["00081197"] = _element("US", outcome.status)
            failed.append(item)
    response: dict[str, Any] = {}
    if study:
        response["00081190"] = _element("UR", f"{base_url}/studies/{study}")
    if failed:
        response["00081198"] = _element("SQ", *failed)
    response["00081199"] = _element("SQ", *stored)
    return response


def http_status(results: list[PartOutcome]) -> int:
    """200 when every instance was stored, 202 when some were, 409 when none was."""
    stored = sum(1 for r in results if r.outcome.ok)
    if results and stored == len(results):
        return 200
    return 202 if stored else 409
