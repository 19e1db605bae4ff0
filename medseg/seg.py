"""DICOM Segmentation out: a mask on a ``Volume`` as a standards-conformant SEG file.

highdicom builds the object (segment descriptions, per-frame functional groups, references
to the exact source instances and frames, patient/study copied from the source); this module
maps medseg's model card onto it and writes the file atomically, so a PACS or a watcher
never sees a half-written SEG.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import highdicom as hd
import numpy as np
import pydicom

from medseg import __version__
from medseg.dicom.volume import Volume
from medseg.durable import write_with
from medseg.errors import ConfigError, DicomInputError, OutputError
from medseg.modelcard import Code, ModelCard
from medseg.prompts import Tracking

log = logging.getLogger(__name__)

SEG_TYPES = ("BINARY", "FRACTIONAL")
FRACTIONAL_LEVELS = 255  # MaximumFractionalValue: probabilities stored in steps of 1/255
MANUFACTURER = "medseg"
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"

# Type 1 in the source: a SEG must repeat or reference them, and no value can be invented.
REQUIRED_SOURCE_UIDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
# Type 2 in the Patient and General Study modules ("present, may be empty"): anonymisers
# often delete them, highdicom insists on them. The SEG gets them empty, as the standard allows.
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# Type 2 values highdicom validates when it copies them (it refuses others, quoting the
# value): what each must be. A present value that is not one of these is written empty.
PATIENT_SEXES = ("M", "F", "O")
CHECKED_TYPE2_VALUES = {
    "PatientBirthDate": "date (YYYYMMDD)",
    "PatientSex": "code (M, F or O)",
    "StudyDate": "date (YYYYMMDD)",
    "StudyTime": "time (HHMMSS.FFFFFF)",
}
_PARSERS = {
    "PatientBirthDate": pydicom.valuerep.DA,
    "StudyDate": pydicom.valuerep.DA,
    "StudyTime": pydicom.valuerep.TM,
}


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _segment_descriptions(
    card: ModelCard,
    version: str,
    family: Code,
    semiautomatic: bool = False,
    tracking: Sequence[Tracking | None] = (),
) -> list[hd.seg.SegmentDescription]:
    """One description per card segment. ``semiautomatic``: the segments are lesions a
    reader prompted (SEMIAUTOMATIC), each tracked by its own label, or by the reader's
    finding (``tracking``, one per segment or none) where their mark named one."""
    kind = hd.seg.SegmentAlgorithmTypeValues
    found = list(tracking) + [None] * (len(card.segments) - len(tracking))
    algorithm_type = kind.SEMIAUTOMATIC if semiautomatic else kind.AUTOMATIC
    algorithm = hd.AlgorithmIdentificationSequence(
        name=card.name[:64], family=_concept(family), version=version[:64]
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.label[:64],
            segmented_property_category=_concept(spec.category),
            segmented_property_type=_concept(spec.type),
            algorithm_type=algorithm_type,
            algorithm_identification=algorithm,
            tracking_uid=(track and track.uid) or hd.UID(),
            tracking_id=(
                (track and track.identifier)
                or (spec.label if semiautomatic else f"{card.name} segment {number}")
            )[:64],
        )
        for number, (spec, track) in enumerate(zip(card.segments, found, strict=True), start=1)
    ]


def _checked_masks(volume: Volume, masks: np.ndarray, card: ModelCard, seg_type: str) -> np.ndarray:
    """``masks`` as (slices, rows, cols, segments) in the dtype highdicom expects.

    FRACTIONAL values are rounded here to the steps of 1/255 the file stores (highdicom
    rounds the same way, half to even), so "is anything left?" is asked of what will be
    written: probabilities of ~1e-6 are nothing, and highdicom, told to omit empty frames
    of a mask with none left, fails with a bare IndexError.
    """
    masks = np.asarray(masks)
    expected = (len(card.segments), *volume.shape)
    if masks.ndim == 3 and len(card.segments) == 1:
        masks = masks[np.newaxis]
    if masks.shape != expected:
        raise OutputError(f"mask shape {masks.shape} does not match (segments, *volume) {expected}")
    if seg_type == "BINARY":
        if masks.dtype != bool:
            if not np.isin(masks, (0, 1)).all():
                raise OutputError("a BINARY SEG needs a bool (or 0/1) mask")
            masks = masks.astype(bool)
    else:
        masks = masks.astype(np.float32)
        if not np.isfinite(masks).all() or masks.min() < 0.0 or masks.max() > 1.0:
            raise OutputError("a FRACTIONAL SEG needs mask values in [0, 1]")
        masks = np.round(masks * FRACTIONAL_LEVELS) / np.float32(FRACTIONAL_LEVELS)
    return np.moveaxis(masks, 0, -1)


def _source_order(
    volume: Volume, masks: np.ndarray
) -> tuple[list[pydicom.Dataset], np.ndarray, list[int] | None]:
    """Source images and mask frames in the order highdicom pairs them.

    Single-frame sources pair by position in ``source_images`` (the volume keeps one dataset
    per slice in volume order). A multi-frame source pairs by frame number, which need not
    follow the volume's geometric order, so the mask is permuted onto frame order.

    A volume of only some of the source's frames (the magnitude image of an instance that
    also holds the phase image at the same positions, ``dicom/volumes.py``) is paired with
    a copy of the source that lists just those frames (highdicom refuses a source with two
    frames at one position); the third value maps that copy's frame numbers back to the
    source's (``_renumber_references``), None when no mapping is needed.
    """
    numbers = [f.frame_number for f in volume.frames]
    if all(n is None for n in numbers):
        if len(volume.datasets) != volume.shape[0]:
            raise OutputError("volume datasets do not match its slices: cannot reference sources")
        return list(volume.datasets), masks, None
    if len(volume.datasets) != 1 or any(n is None for n in numbers):
        raise OutputError("a SEG can reference only one multi-frame source instance")
    source = volume.datasets[0]
    total = int(source.get("NumberOfFrames", 1))
    if len(set(numbers)) != len(numbers) or not all(1 <= n <= total for n in numbers):  # type: ignore[operator]
        raise OutputError("the volume's frames are not frames of its multi-frame source")
    kept = sorted(numbers)  # type: ignore[type-var]
    ordered = np.empty_like(masks)
    for k, number in enumerate(numbers):
        ordered[kept.index(number)] = masks[k]
    if len(kept) == total:
        return [source], ordered, None
    subset = copy.deepcopy(source)  # a header only (no pixel data): cheap to copy
    per_frame = source.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame:
        subset.PerFrameFunctionalGroupsSequence = [per_frame[n - 1] for n in kept]  # type: ignore[operator]
    subset.NumberOfFrames = len(kept)
    return [subset], ordered, kept  # type: ignore[return-value]


def _renumber_references(seg: pydicom.Dataset, source_frames: list[int]) -> None:
    """Point the SEG's frame references at the source's own frame numbers, not the subset's."""
    items = list(seg.get("SourceImageSequence", []))
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            items += list(derivation.get("SourceImageSequence", []))
    for item in items:
        if "ReferencedFrameNumber" in item:
            value = item.ReferencedFrameNumber
            numbers = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
            mapped = [source_frames[int(n) - 1] for n in numbers]
            item.ReferencedFrameNumber = mapped if len(mapped) > 1 else mapped[0]


def _check_required_uids(sources: list[pydicom.Dataset]) -> None:
    for ds in sources:
        for keyword in REQUIRED_SOURCE_UIDS:
            if not str(ds.get(keyword, "") or "").strip():
                raise DicomInputError(
                    f"the source series has no {keyword} (a required DICOM UID that cannot "
                    "be invented): a DICOM-SEG cannot be placed on it"
                )


def _check_sop_classes(sources: list[pydicom.Dataset]) -> None:
    """A SEG references its sources by SOP class: it must be a standard storage class."""
    for ds in sources:
        sop_class = pydicom.uid.UID(str(ds.get("SOPClassUID", "")).strip())
        if sop_class.type != "SOP Class":
            raise DicomInputError(
                f"the source's SOPClassUID {_shown_uid(sop_class)} is not a standard DICOM "
                "storage class: a DICOM-SEG cannot reference it"
            )


def _shown_uid(uid: str) -> str:
    """A UID fit for a one-line message (a malformed one is not echoed)."""
    return uid if uid and len(uid) <= 64 and set(uid) <= set("0123456789.") else "(malformed)"


def _is_valid_value(keyword: str, value: str) -> bool:
    if keyword == "PatientSex":
        return value in PATIENT_SEXES
    try:
        _PARSERS[keyword](value)
    except ValueError:
        return False
    return True


def unusable_type2_values(ds: pydicom.Dataset) -> list[str]:
    """Keywords of present, non-empty type 2 values that are not valid DICOM.

    highdicom validates these when it copies patient and study from the first source and
    refuses the whole object (quoting the value, which is patient data) otherwise.
    """
    unusable = []
    for keyword in CHECKED_TYPE2_VALUES:
        value = ds.get(keyword)
        text = "" if value is None else str(value).strip()
        if text and not _is_valid_value(keyword, text):
            unusable.append(keyword)
    return unusable


def _has_value(ds: pydicom.Dataset, keyword: str) -> bool:
    return keyword in ds and ds[keyword].value not in (None, "", b"")


def _needs_completion(ds: pydicom.Dataset) -> bool:
    if any(keyword not in ds for keyword in TYPE2_PATIENT_STUDY):
        return True
    if "SharedFunctionalGroupsSequence" not in ds:
        return not _has_value(ds, "SliceThickness")
    if not ds.SharedFunctionalGroupsSequence:
        return True
    shared = ds.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared or "PixelMeasuresSequence" not in shared:
        return True
    return not _has_value(shared.PixelMeasuresSequence[0], "SliceThickness")


def _complete_functional_groups(ds: pydicom.Dataset, thickness: float) -> None:
    """Shared orientation/measures for highdicom, taken from frame 1 when only per-frame.

    The loader has already checked that every frame has the same orientation and spacing.
    """
    if not ds.SharedFunctionalGroupsSequence:
        ds.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [pydicom.Dataset()]
    for keyword in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
        if keyword not in shared and keyword in per_frame[0]:
            setattr(shared, keyword, copy.deepcopy(per_frame[0][keyword].value))
    if "PixelMeasuresSequence" in shared:
        measures = shared.PixelMeasuresSequence[0]
        if not _has_value(measures, "SliceThickness"):
            measures.SliceThickness = pydicom.valuerep.format_number_as_ds(thickness)


def _completed(
    ds: pydicom.Dataset, thickness: float, blank: tuple[str, ...] = ()
) -> pydicom.Dataset:
    """A copy of ``ds`` with the empty type 2 attributes and slice thickness highdicom needs,
    and the ``blank`` attributes emptied."""
    ds = copy.deepcopy(ds)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    for keyword in blank:
        setattr(ds, keyword, "")
    if "SharedFunctionalGroupsSequence" in ds:
        _complete_functional_groups(ds, thickness)
    elif not _has_value(ds, "SliceThickness"):
        ds.SliceThickness = pydicom.valuerep.format_number_as_ds(thickness)
    return ds


def completed_sources(
    sources: list[pydicom.Dataset], volume: Volume, *, report: bool = True
) -> list[pydicom.Dataset]:
    """The source headers as highdicom needs them, never modifying the Volume's own.

    Type 1 problems (a missing UID, a SOP class that is no standard storage class) are a
    ``DicomInputError``: nothing can stand in for them. Type 2 patient/study attributes that
    are absent (common in anonymised data) are supplied empty; present values highdicom
    cannot copy (PatientSex "U", a malformed date) are emptied too, each with a WARNING
    that names the attribute but never its value (``report=False`` logs it at DEBUG). A
    missing or empty SliceThickness becomes the volume's slice spacing. All of this is done
    on copies of the headers only.
    """
    _check_required_uids(sources)
    _check_sop_classes(sources)
    blank = tuple(unusable_type2_values(sources[0]))
    for keyword in blank:
        log.log(
            logging.WARNING if report else logging.DEBUG,
            "the source's %s is not a DICOM %s: the SEG carries it empty",
            keyword,
            CHECKED_TYPE2_VALUES[keyword],
        )
    if not blank and not any(_needs_completion(ds) for ds in sources):
        return sources
    thickness = float(volume.spacing[0])
    log.debug("completing type 2 attributes / slice thickness of the source headers")
    completed = [_completed(ds, thickness) if _needs_completion(ds) else ds for ds in sources]
    if blank:  # highdicom copies patient and study from the first source only
        completed[0] = _completed(sources[0], thickness, blank)
    return completed


def _device_serial() -> str:
    return (platform.node() or "medseg")[:64]


def build_seg(
    volume: Volume,
    masks: np.ndarray,
    card: ModelCard,
    *,
    seg_type: str = "BINARY",
    series_number: int = 9001,
    series_description: str = "medseg segmentation",
    algorithm_version: str | None = None,
    algorithm_family: Code = ARTIFICIAL_INTELLIGENCE,
    warn_blanked: bool = True,
    semiautomatic: bool = False,
    tracking: Sequence[Tracking | None] = (),
) -> pydicom.Dataset:
    """The SEG dataset for ``masks`` (segments, slices, rows, cols) on ``volume``, unwritten.

    ``warn_blanked=False`` logs source values written empty at DEBUG instead of WARNING
    (for a dry run whose SEG is discarded). ``tracking``: per segment, the reader's finding
    it carries (its TrackingID / TrackingUID), or None for medseg's own.
    """
    if len(tracking) > len(card.segments):
        raise ConfigError(f"{len(tracking)} tracking entries for {len(card.segments)} segment(s)")
    seg_type = str(seg_type).upper()
    if seg_type not in SEG_TYPES:
        raise ConfigError(f"SEG type must be one of {', '.join(SEG_TYPES)}, not {seg_type!r}")
    if not 0 < int(series_number) < 2**31:
        raise ConfigError(f"series number must be a positive integer, not {series_number}")
    pixel_array = _checked_masks(volume, masks, card, seg_type)
    sources, pixel_array, source_frames = _source_order(volume, pixel_array)
    version = algorithm_version or card.version
    empty = not pixel_array.any()
    if empty:
        # highdicom needs at least one frame; an all-empty result is written with every
        # frame present (and empty) so the SEG still states "nothing found" on each slice.
        log.info("empty mask: writing all %s frames empty", pixel_array.shape[0])
    sources = completed_sources(sources, volume, report=warn_blanked)
    try:
        with warnings.catch_warnings():
            # highdicom quotes the patient's name in this warning: keep it out of logs
            warnings.filterwarnings("ignore", message=PERSON_NAME_WARNING, category=UserWarning)
            seg = _segmentation(
                sources,
                pixel_array,
                seg_type,
                card,
                version,
                algorithm_family,
                empty,
                series_number,
                semiautomatic,
                tracking,
            )
    except KeyError as exc:
        _raise_unsupported_sop_class(exc, sources)
    except (ValueError, AttributeError) as exc:  # highdicom's verdict on the source headers
        # masks and parameters are checked above: what is left is the input series itself
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DicomInputError(f"cannot build a DICOM-SEG for this series: {reason}") from exc
    if source_frames is not None:
        _renumber_references(seg, source_frames)
    seg.SeriesDescription = labelled_description(series_description, card)
    return seg


RESEARCH_LABEL = "RESEARCH ONLY, NOT CLINICAL"


def research_only(card: ModelCard) -> bool:
    """A model whose card says it is not for clinical use."""
    return "not for clinical use" in card.intended_use.lower()


def labelled_content(card: ModelCard, version: str) -> str:
    """The Content Description (LO): the model, after the research label if it needs one."""
    prefix = f"{RESEARCH_LABEL}: " if research_only(card) else ""
    return prefix + f"{card.name} {version}"[: 64 - len(prefix)]


def labelled_description(description: str, card: ModelCard) -> str:
    """The Series Description (LO, 64 characters) a worklist shows: a research model's
    results say so there, at the end, never cut off by a long description."""
    if not research_only(card):
        return description[:64]
    suffix = f" ({RESEARCH_LABEL})"
    return description[: 64 - len(suffix)].rstrip() + suffix


def _raise_unsupported_sop_class(exc: KeyError, sources: list[pydicom.Dataset]) -> NoReturn:
    """highdicom looks the source's IOD up by SOP class; a standard class it does not know
    (e.g. a retired one) ends in a bare ``KeyError`` there. Any other KeyError is a bug."""
    classes = {str(ds.get("SOPClassUID", "")).strip() for ds in sources}
    key = str(exc.args[0]) if exc.args else ""
    if key not in classes:
        raise exc
    name = pydicom.uid.UID(key).name
    raise DicomInputError(
        f"the source's SOPClassUID {_shown_uid(key)} ({name}) is not one highdicom can "
        "reference: a DICOM-SEG cannot be placed on it"
    ) from exc


def check_seg_source(volume: Volume, card: ModelCard) -> None:
    """Fail before inference, not after it: can a SEG for ``card`` be built on ``volume``?

    Builds (and discards) the SEG of a one-voxel mask: every check of ``build_seg`` and of
    highdicom on the source headers runs, for about 0.1 s on a 200-slice series. Raises
    ``DicomInputError`` for a source that cannot carry a SEG (a missing type 1 UID such as
    FrameOfReferenceUID, a SOP class that is no standard storage class); absent or invalid
    type 2 attributes are fine (``write_seg`` writes them empty and warns then).
    """
    probe = np.zeros((len(card.segments), *volume.shape), dtype=bool)
    probe[:, 0, 0, 0] = True
    build_seg(volume, probe, card, warn_blanked=False)


def check_output_path(path: Path) -> None:
    """Fail early with ``OutputError`` if ``path`` cannot receive the SEG (before any work).

    The folder must exist and be writable and ``path`` must not be a folder; a full disk
    can only be found when writing, and ``write_seg`` still reports it then.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {folder} is not writable")


def _segmentation(
    sources: list[pydicom.Dataset],
    pixel_array: np.ndarray,
    seg_type: str,
    card: ModelCard,
    version: str,
    algorithm_family: Code,
    empty: bool,
    series_number: int,
    semiautomatic: bool = False,
    tracking: Sequence[Tracking | None] = (),
) -> hd.seg.Segmentation:
    descriptions = _segment_descriptions(card, version, algorithm_family, semiautomatic, tracking)
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"medseg {card.architecture}"[:64],
        software_versions=__version__,
        device_serial_number=_device_serial(),
        content_description=labelled_content(card, version),
        content_label="MEDSEG",
        omit_empty_frames=not empty,
        max_fractional_value=FRACTIONAL_LEVELS,
    )


def save_atomically(dataset: pydicom.Dataset, path: Path) -> None:
    """Write ``dataset`` to ``path`` via a temp file in the same folder + fsync + rename.

    A reader sees either the old file, no file or the complete new file, never a partial
    one; on failure the temp file is removed and an ``OutputError`` says why.
    """
    path = Path(path)
    try:
        write_with(
            path,
            lambda handle: dataset.save_as(handle, enforce_file_format=True),
            dir_fsync_required=False,  # not every filesystem allows syncing the folder
        )
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_seg(
    volume: Volume,
    masks: np.ndarray,
    card: ModelCard,
    path: Path,
    *,
    seg_type: str = "BINARY",
    series_number: int = 9001,
    series_description: str = "medseg segmentation",
    algorithm_version: str | None = None,
    algorithm_family: Code = ARTIFICIAL_INTELLIGENCE,
    semiautomatic: bool = False,
    tracking: Sequence[Tracking | None] = (),
) -> pydicom.Dataset:
    """Build the SEG for ``masks`` on ``volume`` and write it atomically to ``path``.

    ``masks`` is (segments, slices, rows, cols): bool for BINARY, float in [0, 1] for
    FRACTIONAL; one segment per ``card.segments`` entry (a 3-D mask is accepted for a
    one-segment card); ``tracking`` as for ``build_seg``. Returns the written dataset.
    """
    seg = build_seg(
        volume,
        masks,
        card,
        seg_type=seg_type,
        series_number=series_number,
        series_description=series_description,
        algorithm_version=algorithm_version,
        algorithm_family=algorithm_family,
        semiautomatic=semiautomatic,
        tracking=tracking,
    )
    save_atomically(seg, Path(path))
    log.info(
        "wrote %s SEG %s: %s frame(s), %s segment(s)",
        seg_type,
        path,
        seg.NumberOfFrames,
        len(card.segments),
    )
    return seg


__all__ = [
    "ARTIFICIAL_INTELLIGENCE",
    "build_seg",
    "check_output_path",
    "check_seg_source",
    "completed_sources",
    "save_atomically",
    "write_seg",
]
