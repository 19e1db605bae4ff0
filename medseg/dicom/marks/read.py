"""``read_marks(path)``: one file a viewer saved -> its marks, by the file's SOP class."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from medseg.dicom.marks.gsps import GSPS_SOP_CLASS, read_gsps
from medseg.dicom.marks.mark import Mark
from medseg.dicom.marks.sr import SR_SOP_CLASSES, explain_no_marks, read_sr
from medseg.errors import DicomInputError

log = logging.getLogger(__name__)


def read_marks(path: str | os.PathLike) -> list[Mark]:
    """The marks of a GSPS or structured report file, in the order the file holds them.

    Raises ``DicomInputError`` (one line, naming the file) for a missing or unreadable
    file, another kind of DICOM object, a mark medseg cannot use, or a file with no mark.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        raise DicomInputError(f"{path}: mark file not found") from None
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DicomInputError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from None
    sop_class = str(ds.get("SOPClassUID", ""))
    try:
        if sop_class == GSPS_SOP_CLASS:
            marks, what = read_gsps(ds), "presentation state"
        elif sop_class in SR_SOP_CLASSES:
            marks, what = read_sr(ds), SR_SOP_CLASSES[sop_class]
        else:
            name = pydicom.uid.UID(sop_class).name if sop_class else "an object without SOP class"
            raise DicomInputError(
                f"{name} is not an object medseg reads marks from (a Grayscale Softcopy "
                "Presentation State or a Comprehensive, Comprehensive 3D or Enhanced SR)"
            )
    except DicomInputError as exc:
        raise DicomInputError(f"{path}: {exc}") from None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # a value of the wrong form (text where a number belongs, a missing item): the
        # file's fault, reported as such; the detail goes to the DEBUG log only
        log.debug("reading marks from %s failed", path, exc_info=True)
        raise DicomInputError(
            f"{path}: malformed mark object ({type(exc).__name__}; medseg -vv shows more)"
        ) from None
    if not marks:
        reason = explain_no_marks(ds) if sop_class in SR_SOP_CLASSES else "it holds no graphic"
        raise DicomInputError(f"{path}: no mark to take prompts from: {reason} ({what})")
    log.info("%d mark(s) from a %s", len(marks), what)
    log.debug("marks read from %s", path)
    return marks
