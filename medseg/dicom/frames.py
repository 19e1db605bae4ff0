"""Per-frame geometry and value transforms from classic or Enhanced (multi-frame) headers.

Classic single-frame instances keep ImagePositionPatient, PixelSpacing, RescaleSlope etc. at
the top level; Enhanced and Legacy Converted Enhanced instances keep them in functional
groups, per frame or shared by all frames. Both are flattened here into one ``FrameInfo``
per 2-D frame so sorting and validation never care which kind of file a slice came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from medseg.errors import DicomInputError


@dataclass(frozen=True)
class FrameInfo:
    """One 2-D frame: where it is, how to turn stored values into real values."""

    path: Path
    instance: int  # index into the loaded instances
    frame_index: int | None  # 0-based frame of a multi-frame instance, else None
    position: tuple[float, float, float]
    orientation: tuple[float, ...]  # the 6 ImageOrientationPatient values
    pixel_spacing: tuple[float, float]
    rows: int
    cols: int
    slope: float
    intercept: float
    slice_thickness: float | None
    spacing_between_slices: float | None
    window: tuple[float, float] | None
    kind: str = ""  # what the frame shows (volumes.py): "MAGNITUDE", "M_FFE/MAGNITUDE", ...


def _floats(value: object, count: int, what: str, path: Path) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise DicomInputError(f"{path}: {what} is not numeric ({value!r})") from exc
    if len(numbers) != count or not np.all(np.isfinite(numbers)):
        raise DicomInputError(f"{path}: {what} must hold {count} finite numbers, got {value!r}")
    return numbers


def _optional_float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, pydicom.multival.MultiValue):
            value = value[0]
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _window(item: pydicom.Dataset | None) -> tuple[float, float] | None:
    if item is None:
        return None
    center = _optional_float(item.get("WindowCenter"))
    width = _optional_float(item.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return (center, width)


FRAME_TYPE_SEQUENCES = ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence")


def _value3(value: object) -> str:
    """Value 3 of ImageType / FrameType (the image flavour), '' when absent."""
    values = [value] if isinstance(value, str) else list(value or [])  # type: ignore[call-overload]
    return str(values[2]).strip().upper() if len(values) > 2 else ""


def frame_kind(item: pydicom.Dataset | None, fallback: pydicom.Dataset | None = None) -> str:
    """What a frame shows: its type value 3 and ComplexImageComponent, joined by '/' when
    both are given and differ (``M_FFE/MAGNITUDE``), else whichever is given.

    ``item`` is the frame's MR/CT Image Frame Type item, or a single-frame dataset;
    ``fallback`` (the multi-frame dataset) is used when ``item`` says nothing.
    """
    for source in (item, fallback):
        if source is None:
            continue
        flavour = _value3(source.get("FrameType", source.get("ImageType")))
        if flavour == "MIXED":  # a multi-frame file's summary: its frames say which
            flavour = ""
        component = str(source.get("ComplexImageComponent", "") or "").strip().upper()
        if component == "MIXED":
            component = ""
        parts = [p for p in dict.fromkeys((flavour, component)) if p]
        if parts:
            return "/".join(parts)
    return ""


def is_multiframe(ds: pydicom.Dataset) -> bool:
    """Enhanced-style: functional groups describe the frames."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def frame_count(ds: pydicom.Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise DicomInputError(f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from exc


def classic_frames(ds: pydicom.Dataset, path: Path, instance: int) -> list[FrameInfo]:
    """The single frame of a classic CT/MR Image instance."""
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        if keyword not in ds:
            raise DicomInputError(f"{path}: no {keyword}, cannot place the slice in patient space")
    if "PixelSpacing" not in ds:
        raise DicomInputError(f"{path}: no PixelSpacing")
    slope = _optional_float(ds.get("RescaleSlope"))
    intercept = _optional_float(ds.get("RescaleIntercept"))
    if frame_count(ds) != 1:
        raise DicomInputError(f"{path}: multi-frame image without functional groups")
    return [
        FrameInfo(
            path=path,
            instance=instance,
            frame_index=None,
            position=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path),  # type: ignore[arg-type]
            orientation=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path),
            pixel_spacing=_floats(ds.PixelSpacing, 2, "PixelSpacing", path),  # type: ignore[arg-type]
            rows=int(ds.Rows),
            cols=int(ds.Columns),
            slope=1.0 if slope is None else slope,
            intercept=0.0 if intercept is None else intercept,
            slice_thickness=_optional_float(ds.get("SliceThickness")),
            spacing_between_slices=_optional_float(ds.get("SpacingBetweenSlices")),
            window=_window(ds),
            kind=frame_kind(ds),
        )
    ]


def _group_item(
    per_frame: pydicom.Dataset | None, shared: pydicom.Dataset | None, keyword: str
) -> pydicom.Dataset | None:
    """A functional group macro's item: the per-frame one wins over the shared one."""
    for container in (per_frame, shared):
        if container is not None and keyword in container and len(container[keyword].value):
            return container[keyword].value[0]
    return None


def enhanced_frames(ds: pydicom.Dataset, path: Path, instance: int) -> list[FrameInfo]:
    """One ``FrameInfo`` per frame of an Enhanced / Legacy Converted Enhanced instance."""
    count = frame_count(ds)
    per_frames = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    shared_seq = ds.get("SharedFunctionalGroupsSequence", [])
    shared = shared_seq[0] if len(shared_seq) else None
    if per_frames and len(per_frames) != count:
        raise DicomInputError(
            f"{path}: {len(per_frames)} per-frame functional groups for {count} frames"
        )
    top_slope = _optional_float(ds.get("RescaleSlope"))
    top_intercept = _optional_float(ds.get("RescaleIntercept"))
    frames: list[FrameInfo] = []
    for index in range(count):
        item = per_frames[index] if per_frames else None
        position = _group_item(item, shared, "PlanePositionSequence")
        orientation = _group_item(item, shared, "PlaneOrientationSequence")
        measures = _group_item(item, shared, "PixelMeasuresSequence")
        transform = _group_item(item, shared, "PixelValueTransformationSequence")
        voi = _group_item(item, shared, "FrameVOILUTSequence")
        frame_type = next(
            (f for k in FRAME_TYPE_SEQUENCES if (f := _group_item(item, shared, k)) is not None),
            None,
        )
        where = f"{path} frame {index + 1}"
        if position is None or "ImagePositionPatient" not in position:
            raise DicomInputError(f"{where}: no PlanePositionSequence/ImagePositionPatient")
        if orientation is None or "ImageOrientationPatient" not in orientation:
            raise DicomInputError(f"{where}: no PlaneOrientationSequence/ImageOrientationPatient")
        if measures is None or "PixelSpacing" not in measures:
            raise DicomInputError(f"{where}: no PixelMeasuresSequence/PixelSpacing")
        slope = _optional_float(transform.get("RescaleSlope")) if transform else None
        intercept = _optional_float(transform.get("RescaleIntercept")) if transform else None
        slope = slope if slope is not None else top_slope
        intercept = intercept if intercept is not None else top_intercept
        frames.append(
            FrameInfo(
                path=path,
                instance=instance,
                frame_index=index,
                position=_floats(position.ImagePositionPatient, 3, "ImagePositionPatient", path),  # type: ignore[arg-type]
                orientation=_floats(
                    orientation.ImageOrientationPatient, 6, "ImageOrientationPatient", path
                ),
                pixel_spacing=_floats(measures.PixelSpacing, 2, "PixelSpacing", path),  # type: ignore[arg-type]
                rows=int(ds.Rows),
                cols=int(ds.Columns),
                slope=1.0 if slope is None else slope,
                intercept=0.0 if intercept is None else intercept,
                slice_thickness=_optional_float(measures.get("SliceThickness")),
                spacing_between_slices=_optional_float(measures.get("SpacingBetweenSlices")),
                window=_window(voi) or _window(ds),
                kind=frame_kind(frame_type, ds),
            )
        )
    return frames


def frames_of(ds: pydicom.Dataset, path: Path, instance: int) -> list[FrameInfo]:
    """Every 2-D frame of one instance, whichever kind of header it has."""
    if is_multiframe(ds):
        return enhanced_frames(ds, path, instance)
    return classic_frames(ds, path, instance)
