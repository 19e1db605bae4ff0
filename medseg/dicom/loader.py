"""Load one CT/MR series from files or folders into a ``Volume``.

Headers are read first (cheap) to group files into series and choose one; only the chosen
series' pixel data is decoded. Decoding goes through pydicom's pixel backends, so every
transfer syntax with an installed decoder (pylibjpeg, pylibjpeg-libjpeg/-openjpeg/-rle,
pyjpegls) works, and deflate is handled by pydicom itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels.decoders.base import get_decoder

from medseg.dicom.files import (
    UNREADABLE,
    Header,
    InputPaths,
    SkippedFile,
    is_decoder_panic,
    parse_all,
    read_headers,
    reason_of,
)
from medseg.dicom.frames import FrameInfo, frame_count, frames_of
from medseg.dicom.geometry import build_grid
from medseg.dicom.series import choose_series, left_out
from medseg.dicom.volume import SourceFrame, Volume
from medseg.dicom.volumes import select_volume
from medseg.errors import DicomInputError

log = logging.getLogger(__name__)

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class LoadedSeries:
    """The loaded volume and the files that were left out (with reasons)."""

    volume: Volume
    skipped: tuple[SkippedFile, ...]


@dataclass(frozen=True)
class _Instance:
    path: Path
    dataset: pydicom.Dataset  # header only, PixelData removed
    pixels: np.ndarray  # (frames, rows, cols) stored values
    monochrome1: bool
    stored_range: tuple[int, int]


def _stored_range(ds: pydicom.Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _raw_transfer_syntax(ds: pydicom.Dataset) -> pydicom.uid.UID:
    """A raw dataset (no file meta) is uncompressed: its encoding is what pydicom detected."""
    implicit, little = ds.original_encoding
    if implicit:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian


def _preferred_plugin(ds: pydicom.Dataset) -> str:
    """Pillow (libjpeg-turbo) for 8-bit JPEG baseline: about 8x faster than pylibjpeg there.

    Conforming JPEG decoders may differ by one grey level (IDCT rounding); pinning the
    decoder where it is installed keeps lossy series' voxels the same from run to run.
    """
    if ds.file_meta.get("TransferSyntaxUID") != pydicom.uid.JPEGBaseline8Bit:
        return ""
    decoder = get_decoder(pydicom.uid.JPEGBaseline8Bit)
    return "pillow" if "pillow" in decoder.available_plugins else ""


def _decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    plugin = _preferred_plugin(ds)
    if plugin:
        try:
            ds.pixel_array_options(decoding_plugin=plugin)
            return ds.pixel_array
        except (ValueError, OSError, NotImplementedError, RuntimeError) as exc:
            # e.g. a 12-bit stream mislabelled as baseline: let pydicom pick another decoder
            log.debug("%s could not decode %s: %s", plugin, ds.get("SOPInstanceUID"), exc)
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _identity_from_file_meta(ds: pydicom.Dataset) -> None:
    """A dataset that lost its SOP class/instance UID still names them in its file meta.

    Those are the same values by definition (PS3.10), so restoring them is no invention;
    where neither exists the UID stays missing and the SEG writer refuses the series.
    """
    meta = getattr(ds, "file_meta", None) or pydicom.Dataset()
    for keyword, meta_keyword in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        if not ds.get(keyword) and meta.get(meta_keyword):
            setattr(ds, keyword, meta.get(meta_keyword))


def _read_instance(path: Path, forced: bool = False) -> _Instance:
    """Read and decode one file; ``ValueError``-like decoder failures propagate to the caller."""
    ds = pydicom.dcmread(path, force=forced)
    parse_all(ds)  # elements after the pixel data were not read with the header
    if forced and "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _raw_transfer_syntax(ds)
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise DicomInputError(f"{path}: image instance has no pixel data")
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise DicomInputError(
            f"{path}: only greyscale images are supported ({photometric}, {samples} samples)"
        )
    pixels = _decode_pixels(ds)
    frames = frame_count(ds)
    pixels = pixels.reshape((frames, int(ds.Rows), int(ds.Columns)))
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
        del ds.SpecificCharacterSet  # empty means the default repertoire; writers reject ''
    _identity_from_file_meta(ds)
    return _Instance(path, ds, pixels, photometric == "MONOCHROME1", _stored_range(ds))


def _decode_series(
    headers: Sequence[Header], skipped: list[SkippedFile]
) -> tuple[list[_Instance], list[FrameInfo]]:
    instances: list[_Instance] = []
    frames: list[FrameInfo] = []
    for header in headers:
        try:
            instance = _read_instance(header.path, header.forced)
        except DicomInputError:
            raise
        except BaseException as exc:  # narrowed at once: UNREADABLE or a decoder's panic
            if not (isinstance(exc, UNREADABLE) or is_decoder_panic(exc)):
                raise
            reason = reason_of(exc)
            log.warning("skipping %s: cannot decode pixel data: %s", header.path, reason)
            skipped.append(SkippedFile(header.path, f"cannot decode pixel data: {reason}"))
            continue
        frames.extend(frames_of(instance.dataset, instance.path, len(instances)))
        instances.append(instance)
    return instances, frames


def _real_values(instance: _Instance, frame: FrameInfo) -> np.ndarray:
    stored = instance.pixels[frame.frame_index or 0].astype(np.float64)
    if instance.monochrome1:
        low, high = instance.stored_range
        stored = (low + high) - stored
    return (stored * frame.slope + frame.intercept).astype(np.float32)


def _window(instance: _Instance, frame: FrameInfo) -> tuple[float, float] | None:
    if frame.window is None or not instance.monochrome1:
        return frame.window
    low, high = instance.stored_range
    center, width = frame.window
    mirrored = (low + high) * frame.slope + 2 * frame.intercept - center
    return (float(mirrored), width)


def _check_same_frame_of_reference(instances: list[_Instance]) -> None:
    """Slices of one grid must share a patient coordinate system."""
    first = instances[0]
    reference = first.dataset.get("FrameOfReferenceUID")
    for instance in instances[1:]:
        if instance.dataset.get("FrameOfReferenceUID") != reference:
            raise DicomInputError(
                f"inconsistent FrameOfReferenceUID: {first.path} and {instance.path} "
                "lie in different patient coordinate systems"
            )


def _is_localizer(header: Header) -> bool:
    image_type = header.dataset.get("ImageType", [])
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return "LOCALIZER" in (str(v).upper() for v in values)


def _drop_localizers(group: list[Header], skipped: list[SkippedFile]) -> list[Header]:
    """Scout images often share the series: leave them out rather than fail on orientation."""
    kept = [h for h in group if not _is_localizer(h)]
    if not kept or len(kept) == len(group):
        return group
    for header in group:
        if _is_localizer(header):
            skipped.append(
                SkippedFile(header.path, "localizer (scout) image, not part of the volume")
            )
    return kept


def load_series(
    inputs: InputPaths, *, series_uid: str | None = None, volume: str | None = None
) -> LoadedSeries:
    """Load the single CT/MR series below ``inputs`` (or the one ``series_uid`` names).

    A series with several images per position (magnitude and phase, ``volumes.py``) gives
    the volume ``volume`` names (a type such as ``PHASE`` or a 1-based number), by default
    its magnitude image.

    ``inputs`` is a file, a folder or a sequence of them (searched recursively, any file
    name). Files that were read but cannot be used (unreadable, not DICOM, no series UID,
    members of the chosen series that are no CT/MR slice, undecodable pixel data, scouts) are
    skipped and listed in ``LoadedSeries.skipped`` with the reason; anything
    that prevents one consistent volume raises ``DicomInputError`` with a one-line reason.
    """
    headers, skipped = read_headers(inputs)
    uid, group = choose_series(headers, series_uid)
    skipped.extend(left_out(headers, uid, group))
    group = _drop_localizers(group, skipped)
    instances, frames = _decode_series(group, skipped)
    if not instances:
        raise DicomInputError(
            f"series {uid}: none of its {len(group)} file(s) could be decoded "
            f"(first problem: {skipped[-1].reason})"
        )
    _check_same_frame_of_reference(instances)
    frames, chosen = select_volume(frames, volume, uid)
    if chosen is not None:
        used = {frame.instance for frame in frames}
        for number, instance in enumerate(instances):
            if number not in used:
                reason = f"another volume of the series, not {chosen.kind or chosen.number}"
                skipped.append(SkippedFile(instance.path, reason))
    grid = build_grid(frames)
    first = frames[grid.order[0]]
    voxels = np.empty((len(grid.order), first.rows, first.cols), dtype=np.float32)
    source_frames: list[SourceFrame] = []
    dataset_order: list[int] = []
    for k, index in enumerate(grid.order):
        frame = frames[index]
        instance = instances[frame.instance]
        voxels[k] = _real_values(instance, frame)
        ds = instance.dataset
        number = None if frame.frame_index is None else frame.frame_index + 1
        source_frames.append(
            SourceFrame(str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")), number)
        )
        if frame.instance not in dataset_order:
            dataset_order.append(frame.instance)
    head = instances[first.instance].dataset
    volume = Volume(
        voxels=voxels,
        spacing=grid.spacing,
        origin=tuple(float(v) for v in grid.positions[0]),  # type: ignore[arg-type]
        direction=grid.direction,
        positions=grid.positions,
        frames=tuple(source_frames),
        datasets=tuple(instances[i].dataset for i in dataset_order),
        modality=str(head.get("Modality", "")).upper(),
        series_instance_uid=uid,
        study_instance_uid=str(head.get("StudyInstanceUID", "")),
        window=_window(instances[first.instance], first),
        series_description=str(head.get("SeriesDescription", "")),
    )
    log.info(
        "loaded %s series %s: %s slices of %sx%s, spacing %s mm, %s file(s) skipped",
        volume.modality,
        uid,
        volume.shape[0],
        volume.shape[1],
        volume.shape[2],
        tuple(round(s, 4) for s in volume.spacing),
        len(skipped),
    )
    return LoadedSeries(volume, tuple(skipped))
