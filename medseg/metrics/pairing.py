"""Which prediction file belongs to which truth file, and which segment to which segment.

Cases pair by the series a DICOM-SEG references (ReferencedSeriesSequence) when both sides
are SEGs of one series; then by the source image instances they reference (the SOP Instance
UIDs in ReferencedSeriesSequence/ReferencedInstanceSequence, SourceImageSequence and each
frame's DerivationImageSequence/SourceImageSequence), so SEGs lacking
ReferencedSeriesSequence still pair when they were derived from the same images; otherwise
by file stem (``case01.nii.gz`` <-> ``case01.dcm``).
Segments pair by label (case-insensitive) when the prediction has the truth's label, else
by segment number, unless a segment map says otherwise.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.errors import ConfigError
from medseg.maskio import (
    ALL_SEGMENTS,
    LABEL_MAP_SEGMENTATION_STORAGE,
    SEGMENTATION_STORAGE,
    MaskFile,
    MaskInputError,
    is_itk_file,
    mask_stem,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydicom import Dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskRef:
    """A mask file found on disk, with the keys it can be paired by."""

    path: Path
    stem: str
    series_uid: str | None = None
    instance_uids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CasePair:
    """One case: a prediction file and its truth file."""

    case: str
    pred: Path
    truth: Path


@dataclass(frozen=True)
class Pairing:
    pairs: tuple[CasePair, ...]
    unpaired_pred: tuple[Path, ...]
    unpaired_truth: tuple[Path, ...]


@dataclass(frozen=True)
class SegReferences:
    """What a DICOM-SEG header says it was derived from."""

    series_uid: str | None
    instance_uids: frozenset[str]


def _sop_uids(items: Iterable[Dataset] | None) -> set[str]:
    return {
        str(item.ReferencedSOPInstanceUID)
        for item in items or ()
        if "ReferencedSOPInstanceUID" in item
    }


def _referenced_instances(header: Dataset) -> frozenset[str]:
    """SOP Instance UIDs of the source images, from every place a SEG may list them."""
    uids: set[str] = set()
    for series in header.get("ReferencedSeriesSequence") or ():
        uids |= _sop_uids(series.get("ReferencedInstanceSequence"))
    uids |= _sop_uids(header.get("SourceImageSequence"))
    groups = [*(header.get("SharedFunctionalGroupsSequence") or ())]
    groups += [*(header.get("PerFrameFunctionalGroupsSequence") or ())]
    for group in groups:
        for derivation in group.get("DerivationImageSequence") or ():
            uids |= _sop_uids(derivation.get("SourceImageSequence"))
    return frozenset(uids)


def _seg_references(path: Path) -> SegReferences | None:
    """The references of a DICOM-SEG, read from its header; None when not a SEG."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    if str(header.get("SOPClassUID", "")) not in (
        SEGMENTATION_STORAGE,
        LABEL_MAP_SEGMENTATION_STORAGE,
    ):
        return None
    referenced = header.get("ReferencedSeriesSequence")
    series = str(referenced[0].SeriesInstanceUID) if referenced else None
    return SegReferences(series, _referenced_instances(header))


def find_masks(path: Path) -> list[MaskRef]:
    """A mask file, or every NIfTI/NRRD/DICOM-SEG file under a folder (recursive)."""
    path = Path(path)
    if path.is_file():
        refs = None if is_itk_file(path) else _seg_references(path)
        if refs is None:
            return [MaskRef(path, mask_stem(path))]
        return [MaskRef(path, mask_stem(path), refs.series_uid, refs.instance_uids)]
    if not path.is_dir():
        raise MaskInputError(f"not found: {path}")
    found = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in file.relative_to(path).parts):
            continue
        if is_itk_file(file):
            found.append(MaskRef(file, mask_stem(file)))
            continue
        refs = _seg_references(file)
        if refs is not None:
            found.append(MaskRef(file, mask_stem(file), refs.series_uid, refs.instance_uids))
        else:
            log.debug("skipping %s: not a mask file", file)
    if not found:
        raise MaskInputError(f"no DICOM-SEG, NIfTI or NRRD mask files under {path}")
    return found


def pair_cases(preds: list[MaskRef], truths: list[MaskRef]) -> Pairing:
    """Pair by referenced series, then by shared source instances, then by unique stem."""
    if len(preds) == 1 and len(truths) == 1:
        pair = CasePair(truths[0].stem, preds[0].path, truths[0].path)
        return Pairing((pair,), (), ())
    pairs: list[CasePair] = []
    free_preds = list(preds)
    free_truths = []
    by_series: dict[str, list[MaskRef]] = {}
    for ref in preds:
        if ref.series_uid:
            by_series.setdefault(ref.series_uid, []).append(ref)
    for truth in truths:
        matches = by_series.get(truth.series_uid or "", [])
        if len(matches) > 1:
            names = ", ".join(m.path.name for m in matches)
            raise MaskInputError(f"several predictions reference one series: {names}")
        if matches and matches[0] in free_preds:
            pairs.append(CasePair(truth.stem, matches[0].path, truth.path))
            free_preds.remove(matches[0])
        else:
            free_truths.append(truth)
    for truth in list(free_truths):
        if not truth.instance_uids:
            continue
        matches = [ref for ref in free_preds if ref.instance_uids & truth.instance_uids]
        if len(matches) > 1:
            names = ", ".join(m.path.name for m in matches)
            raise MaskInputError(f"several predictions reference one source image: {names}")
        if matches:
            pairs.append(CasePair(truth.stem, matches[0].path, truth.path))
            free_preds.remove(matches[0])
            free_truths.remove(truth)
    pred_stems = Counter(ref.stem for ref in free_preds)
    truth_stems = Counter(ref.stem for ref in free_truths)
    for truth in list(free_truths):
        if truth_stems[truth.stem] == 1 and pred_stems[truth.stem] == 1:
            pred = next(ref for ref in free_preds if ref.stem == truth.stem)
            pairs.append(CasePair(truth.stem, pred.path, truth.path))
            free_preds.remove(pred)
            free_truths.remove(truth)
    cases = Counter(pair.case for pair in pairs)
    pairs = [
        pair if cases[pair.case] == 1 else CasePair(str(pair.truth), pair.pred, pair.truth)
        for pair in pairs
    ]
    return Pairing(
        tuple(sorted(pairs, key=lambda p: p.case)),
        tuple(ref.path for ref in free_preds),
        tuple(ref.path for ref in free_truths),
    )


def parse_segment_map(text: str | None) -> tuple[tuple[str, str], ...]:
    """``"1:2,Liver:liver"`` -> (("1", "2"), ("Liver", "liver")): pred segment -> truth.

    Either side may be ``*``: the union of all that file's segments.
    """
    if not text:
        return ()
    entries = []
    for item in text.split(","):
        pred, sep, truth = item.partition(":")
        if not sep or not pred.strip() or not truth.strip():
            raise ConfigError(
                f"--segment-map entry {item!r} must be PRED:TRUTH (segment number or label)"
            )
        entries.append((pred.strip(), truth.strip()))
    return tuple(entries)


def _resolve(mask: MaskFile, segment: str) -> int | str:
    return ALL_SEGMENTS if segment == ALL_SEGMENTS else mask.find_segment(segment).number


def pair_segments(
    pred: MaskFile, truth: MaskFile, segment_map: tuple[tuple[str, str], ...] = ()
) -> list[tuple[int | str | None, int | str]]:
    """(pred segment or None if the prediction lacks it, truth segment) pairs.

    Segments are numbers, or ``"*"`` (all segments together) where the map says so.
    """
    if segment_map:
        return [(_resolve(pred, p), _resolve(truth, t)) for p, t in segment_map]
    result: list[tuple[int | str | None, int | str]] = []
    for segment in truth.segments:
        by_label = [s for s in pred.segments if s.label.casefold() == segment.label.casefold()]
        by_number = [s for s in pred.segments if s.number == segment.number]
        match = (by_label or by_number or [None])[0]
        if match is None:
            log.warning(
                "%s: prediction has no segment %s (%s); scoring it as empty",
                pred.path.name,
                segment.number,
                segment.label,
            )
        result.append((match.number if match else None, segment.number))
    return result
