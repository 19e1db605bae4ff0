"""What a mask file says it is about: whose image, which frame of reference, which structure.

A Dice of a prediction on one patient against the truth of another, or of a predicted
"Lesion" against a true "Liver", is a number with no meaning; ``mismatches`` names such
differences before anything is scored. Only what both files state is compared: a DICOM-SEG
carries PatientID, FrameOfReferenceUID and per segment a label and a SegmentedPropertyType
code; a NIfTI/NRRD carries neither patient nor frame of reference, and segment names only
when 3D Slicer wrote them (``SegmentN_Name``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.maskio import (
    LABEL_MAP_SEGMENTATION_STORAGE,
    SEGMENTATION_STORAGE,
    MaskInputError,
    _itk_segment_names,
    is_itk_file,
)


@dataclass(frozen=True)
class SegmentMeaning:
    """A segment's number, its label, and its (scheme, value) property type code if any."""

    number: int
    label: str
    code: tuple[str, str] | None = None


@dataclass(frozen=True)
class MaskIdentity:
    """What one mask file states about itself; None or () where the format is silent."""

    patient_id: str | None
    frame_of_reference_uid: str | None
    segments: tuple[SegmentMeaning, ...]


def read_identity(path: Path) -> MaskIdentity:
    """The identity of a DICOM-SEG (from its header) or NIfTI/NRRD (named labels only)."""
    path = Path(path)
    if is_itk_file(path):
        return _itk_identity(path)
    return _seg_identity(path)


def _itk_identity(path: Path) -> MaskIdentity:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MaskInputError(f"cannot read {path.name} as NIfTI/NRRD") from exc
    names = _itk_segment_names(reader)
    segments = tuple(SegmentMeaning(n, label) for n, label in sorted(names.items()))
    return MaskIdentity(None, None, segments)


def _seg_identity(path: Path) -> MaskIdentity:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise MaskInputError(f"{path.name} is neither DICOM-SEG nor NIfTI/NRRD") from exc
    if str(header.get("SOPClassUID", "")) not in (
        SEGMENTATION_STORAGE,
        LABEL_MAP_SEGMENTATION_STORAGE,
    ):
        return MaskIdentity(None, None, ())
    segments = []
    for item in header.get("SegmentSequence") or ():
        codes = item.get("SegmentedPropertyTypeCodeSequence") or ()
        code = (str(codes[0].CodingSchemeDesignator), str(codes[0].CodeValue)) if codes else None
        segments.append(
            SegmentMeaning(int(item.SegmentNumber), str(item.get("SegmentLabel", "")), code)
        )
    return MaskIdentity(
        str(header.get("PatientID", "")).strip() or None,
        str(header.get("FrameOfReferenceUID", "")).strip() or None,
        tuple(segments),
    )


def _same_label(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def _segment_mismatches(pred: MaskIdentity, truth: MaskIdentity) -> list[str]:
    """Segments paired as ``pairing.pair_segments`` pairs them (by label, else by number)
    whose labels or property type codes differ."""
    found = []
    for segment in truth.segments:
        by_label = [s for s in pred.segments if _same_label(s.label, segment.label)]
        by_number = [s for s in pred.segments if s.number == segment.number]
        match = (by_label or by_number or [None])[0]
        if match is None:
            continue  # the prediction is silent about it (or lacks it: scored as empty)
        if not _same_label(match.label, segment.label) or (
            match.code and segment.code and match.code != segment.code
        ):
            found.append(f"segment meaning (predicted {match.label!r}, true {segment.label!r})")
    return found


def mismatches(pred: Path, truth: Path, *, compare_segments: bool = True) -> list[str]:
    """What ``pred`` and ``truth`` both state and state differently, in words without the
    values of patient identifiers (they go to terminals and logs)."""
    a, b = read_identity(pred), read_identity(truth)
    found = []
    if a.patient_id and b.patient_id and a.patient_id != b.patient_id:
        found.append("patient ID")
    if (
        a.frame_of_reference_uid
        and b.frame_of_reference_uid
        and a.frame_of_reference_uid != b.frame_of_reference_uid
    ):
        found.append("frame of reference")
    if compare_segments:
        found += _segment_mismatches(a, b)
    return found
