"""Marks from a structured report: TID 1500 Measurement Reports as OHIF and 3D Slicer (dcmqi)
save a reader's measurements.

Every SCOORD (image coordinates on the image its IMAGE child names) and SCOORD3D (patient mm
in a frame of reference) in the content tree is a mark, wherever it sits: as a measurement
group's image region or under a NUM it was measured from (a Length's two endpoints). The
enclosing Measurement Group lends its Tracking Identifier and Tracking Unique Identifier; a
group whose tracking identifier or finding says NEGATIVE or EXCLUDE marks something to
leave out (docs/marks.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pydicom

from medseg.dicom.marks.mark import Mark, has_word
from medseg.dicom.marks.shapes import shapes
from medseg.errors import DicomInputError

log = logging.getLogger(__name__)

SR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.35": "Extensible SR",
}
MEASUREMENT_GROUP = ("125007", "DCM")
TRACKING_IDENTIFIER = ("112039", "DCM")
TRACKING_UID = ("112040", "DCM")
FINDING = ("121071", "DCM")
NEGATIVE_WORDS = ("NEGATIVE", "EXCLUDE")


@dataclass(frozen=True)
class _Group:
    """What a Measurement Group says about the marks inside it."""

    tracking_identifier: str | None = None
    tracking_uid: str | None = None
    negative: bool = False


def _concept(item: pydicom.Dataset) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    code = names[0]
    return str(code.get("CodeValue", "")), str(code.get("CodingSchemeDesignator", ""))


def _children(item: pydicom.Dataset) -> list[pydicom.Dataset]:
    return list(item.get("ContentSequence", []))


def _group(item: pydicom.Dataset) -> _Group:
    identifier = uid = finding = None
    for child in _children(item):
        concept = _concept(child)
        if concept == TRACKING_IDENTIFIER:
            identifier = str(child.get("TextValue", "")) or None
        elif concept == TRACKING_UID:
            uid = str(child.get("UID", "")) or None
        elif concept == FINDING and child.get("ConceptCodeSequence"):
            finding = str(child.ConceptCodeSequence[0].get("CodeMeaning", ""))
    return _Group(identifier, uid, has_word((identifier, finding), NEGATIVE_WORDS))


def _image(scoord: pydicom.Dataset, source: str) -> tuple[str, int | None]:
    """The image a SCOORD is drawn on: its IMAGE child (TID 1500 writes exactly one)."""
    images = [c for c in _children(scoord) if str(c.get("ValueType", "")) == "IMAGE"]
    refs = [r for image in images for r in image.get("ReferencedSOPSequence", [])]
    if len(refs) != 1:
        raise DicomInputError(f"{source}: must name one image, names {len(refs)}")
    frames = refs[0].get("ReferencedFrameNumber")
    if isinstance(frames, pydicom.multival.MultiValue):
        if len(frames) != 1:
            raise DicomInputError(f"{source}: must name one frame, names {len(frames)}")
        frames = frames[0]
    frame = None if frames in (None, "") else int(frames)
    return str(refs[0].get("ReferencedSOPInstanceUID", "")), frame


def _marks(item: pydicom.Dataset, group: _Group) -> list[Mark]:
    value_type = str(item.get("ValueType", ""))
    graphic_type = str(item.get("GraphicType", "")).upper()
    data = np.asarray(item.get("GraphicData", []), dtype=np.float64)
    common = {
        "tracking_identifier": group.tracking_identifier,
        "tracking_uid": group.tracking_uid,
        "negative": group.negative,
    }
    if value_type == "SCOORD":
        source = f"SR SCOORD {graphic_type or 'graphic'}"
        if data.size % 2:
            raise DicomInputError(f"{source}: graphic data must be (column, row) pairs")
        uid, frame = _image(item, source)
        return [
            Mark(kind, pts, source, sop_instance_uid=uid, frame_number=frame, **common)
            for kind, pts in shapes(graphic_type, data.reshape(-1, 2), source)
        ]
    source = f"SR SCOORD3D {graphic_type or 'graphic'}"
    if data.size % 3:
        raise DicomInputError(f"{source}: graphic data must be (x, y, z) triplets")
    frame_of_reference = str(item.get("ReferencedFrameOfReferenceUID", ""))
    return [
        Mark(kind, pts, source, "patient", frame_of_reference_uid=frame_of_reference, **common)
        for kind, pts in shapes(graphic_type, data.reshape(-1, 3), source)
    ]


def _walk(item: pydicom.Dataset, group: _Group, out: list[Mark]) -> None:
    if _concept(item) == MEASUREMENT_GROUP:
        group = _group(item)
    if str(item.get("ValueType", "")) in ("SCOORD", "SCOORD3D"):
        out.extend(_marks(item, group))
    for child in _children(item):
        _walk(child, group, out)


def read_sr(ds: pydicom.Dataset) -> list[Mark]:
    """Every SCOORD / SCOORD3D of a structured report as a Mark."""
    marks: list[Mark] = []
    _walk(ds, _Group(), marks)
    log.debug("SR %s: %d mark(s)", ds.get("SOPInstanceUID", "?"), len(marks))
    return marks


def explain_no_marks(ds: pydicom.Dataset) -> str:
    """Why an SR gave no marks, in words a PACS administrator can act on."""

    def segments(item: pydicom.Dataset) -> bool:
        if str(item.get("ValueType", "")) == "IMAGE":
            ref = item.get("ReferencedSOPSequence", [None])[0]
            if ref is not None and "ReferencedSegmentNumber" in ref:
                return True
        return any(segments(child) for child in _children(item))

    if segments(ds):
        return (
            "its measurements refer to a segmentation (DICOM-SEG segments), not to regions "
            "drawn on images"
        )
    return "it holds no SCOORD or SCOORD3D region"
