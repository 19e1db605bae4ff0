"""UIDs received from the network become folder and file names only after this check.

A peer controls every value it sends; ``../../x`` as a SOPInstanceUID must never reach
``Path``. A DICOM UID is digits and dots, at most 64 characters (PS3.5 9.1).
"""

from __future__ import annotations

import re

from medseg.errors import DicomInputError

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class UnsafeUidError(DicomInputError):
    """A received UID is not a valid DICOM UID and cannot be used in a path."""


def checked_uid(value: object, what: str) -> str:
    """``value`` as a UID string safe to use as a path component, else ``UnsafeUidError``."""
    text = str(value or "").strip().rstrip("\x00")
    if not text or len(text) > 64 or not _UID.match(text):
        shown = text if len(text) <= 70 else text[:67] + "..."
        raise UnsafeUidError(f"{what} {shown!r} is not a valid DICOM UID")
    return text


def is_uid(text: str) -> bool:
    """Whether ``text`` is exactly a UID (no stripping): digits and dots, 1-64 characters."""
    return 0 < len(text) <= 64 and bool(_UID.match(text))
