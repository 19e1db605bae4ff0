"""DICOM Segmentation out: a mask on a ``Volume`` as a standards-conformant SEG file.

highdicom builds the object (segment descriptions, per-frame functional groups, references
to the exact source instances and frames, patient/study copied from the source); this module
maps medseg's model card onto it and writes the file atomically, so a PACS or a watcher
never sees a half-written SEG.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from medseg import __version__
from medseg.dicom.volume import Volume
from medseg.errors import ConfigError, DicomInputError, OutputError
from medseg.modelcard import Code, ModelCard

log = logging.getLogger(__name__)

SEG_TYPES = ("BINARY", "FRACTIONAL")
MANUFACTURER = "medseg"
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _segment_descriptions(
    card: ModelCard, version: str, family: Code
) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=card.name[:64], family=_concept(family), version=version[:64]
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.label[:64],
            segmented_property_category=_concept(spec.category),
            segmented_property_type=_concept(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"{card.name} segment {number}"[:64],
        )
        for number, spec in enumerate(card.segments, start=1)
    ]


def _checked_masks(volume: Volume, masks: np.ndarray, card: ModelCard, seg_type: str) -> np.ndarray:
    """``masks`` as (slices, rows, cols, segments) in the dtype highdicom expects."""
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
    return np.moveaxis(masks, 0, -1)


def _source_order(volume: Volume, masks: np.ndarray) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """Source images and mask frames in the order highdicom pairs them.

    Single-frame sources pair by position in ``source_images`` (the volume keeps one dataset
    per slice in volume order). A multi-frame source pairs by frame number, which need not
    follow the volume's geometric order, so the mask is permuted onto frame order.
    """
    numbers = [f.frame_number for f in volume.frames]
    if all(n is None for n in numbers):
        if len(volume.datasets) != volume.shape[0]:
            raise OutputError("volume datasets do not match its slices: cannot reference sources")
        return list(volume.datasets), masks
    if len(volume.datasets) != 1 or any(n is None for n in numbers):
        raise OutputError("a SEG can reference only one multi-frame source instance")
    source = volume.datasets[0]
    total = int(source.get("NumberOfFrames", 1))
    if sorted(numbers) != list(range(1, total + 1)):  # type: ignore[type-var]
        raise OutputError("the volume does not cover every frame of its multi-frame source")
    ordered = np.empty_like(masks)
    for k, number in enumerate(numbers):
        ordered[number - 1] = masks[k]  # type: ignore[operator]
    return [source], ordered


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
) -> pydicom.Dataset:
    """The SEG dataset for ``masks`` (segments, slices, rows, cols) on ``volume``, unwritten."""
    seg_type = str(seg_type).upper()
    if seg_type not in SEG_TYPES:
        raise ConfigError(f"SEG type must be one of {', '.join(SEG_TYPES)}, not {seg_type!r}")
    if not 0 < int(series_number) < 2**31:
        raise ConfigError(f"series number must be a positive integer, not {series_number}")
    pixel_array = _checked_masks(volume, masks, card, seg_type)
    sources, pixel_array = _source_order(volume, pixel_array)
    version = algorithm_version or card.version
    empty = not pixel_array.any()
    if empty:
        # highdicom needs at least one frame; an all-empty result is written with every
        # frame present (and empty) so the SEG still states "nothing found" on each slice.
        log.info("empty mask: writing all %s frames empty", pixel_array.shape[0])
    if not sources[0].get("FrameOfReferenceUID"):
        raise DicomInputError(
            "the source series has no FrameOfReferenceUID: a DICOM-SEG cannot be placed on it"
        )
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
            )
    except (ValueError, AttributeError) as exc:  # highdicom's verdict on the source headers
        # masks and parameters are checked above: what is left is the input series itself
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DicomInputError(f"cannot build a DICOM-SEG for this series: {reason}") from exc
    seg.SeriesDescription = series_description[:64]
    return seg


def check_seg_source(volume: Volume, card: ModelCard) -> None:
    """Fail before inference, not after it: can a SEG for ``card`` be built on ``volume``?

    Builds (and discards) the SEG of a one-voxel mask: every check of ``build_seg`` and of
    highdicom on the source headers runs, for about 0.1 s on a 200-slice series. Raises
    ``DicomInputError`` for a source that cannot carry a SEG (e.g. no FrameOfReferenceUID).
    """
    probe = np.zeros((len(card.segments), *volume.shape), dtype=bool)
    probe[:, 0, 0, 0] = True
    build_seg(volume, probe, card)


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
) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=seg_type,
        segment_descriptions=_segment_descriptions(card, version, algorithm_family),
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"medseg {card.architecture}"[:64],
        software_versions=__version__,
        device_serial_number=_device_serial(),
        content_description=f"{card.name} {version}"[:64],
        content_label="MEDSEG",
        omit_empty_frames=not empty,
    )


def save_atomically(dataset: pydicom.Dataset, path: Path) -> None:
    """Write ``dataset`` to ``path`` via a temp file in the same folder + fsync + rename.

    A reader sees either the old file, no file or the complete new file, never a partial
    one; on failure the temp file is removed and an ``OutputError`` says why.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            dataset.save_as(handle, enforce_file_format=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        log.debug("cannot open %s to fsync the rename: %s", folder, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("fsync of folder %s failed: %s", folder, exc)
    finally:
        os.close(fd)


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
) -> pydicom.Dataset:
    """Build the SEG for ``masks`` on ``volume`` and write it atomically to ``path``.

    ``masks`` is (segments, slices, rows, cols): bool for BINARY, float in [0, 1] for
    FRACTIONAL; one segment per ``card.segments`` entry (a 3-D mask is accepted for a
    one-segment card). Returns the written dataset.
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
    "save_atomically",
    "write_seg",
]
