"""Put frames in order along the slice normal and check they form one regular grid.

The slice order comes from geometry alone (ImagePositionPatient projected on the normal of
ImageOrientationPatient): file names and InstanceNumber are too often wrong. A volume is
only built when every frame shares orientation, matrix and pixel spacing and the slices are
evenly spaced along the normal, because every later stage (resampling, SEG frame
positions, NIfTI export) assumes a regular grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.dicom.frames import FrameInfo
from medseg.errors import DicomInputError

ORIENTATION_TOLERANCE = 1e-3  # direction cosines
PIXEL_SPACING_TOLERANCE = 1e-3  # relative
SLICE_SPACING_TOLERANCE = 0.01  # relative to the mean gap
DUPLICATE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Grid:
    """The sorted order of frames and the regular grid they form."""

    order: tuple[int, ...]  # indices into the frame list, in volume order
    spacing: tuple[float, float, float]  # (slice, row, col) mm
    direction: np.ndarray  # 3x3, columns = i, j, k unit vectors (LPS)
    positions: np.ndarray  # (slices, 3) in volume order


def _unit_axes(frame: FrameInfo) -> tuple[np.ndarray, np.ndarray]:
    row = np.asarray(frame.orientation[:3], dtype=np.float64)
    col = np.asarray(frame.orientation[3:], dtype=np.float64)
    row_norm, col_norm = np.linalg.norm(row), np.linalg.norm(col)
    if row_norm < 1e-6 or col_norm < 1e-6:
        raise DicomInputError(f"{frame.path}: ImageOrientationPatient has a zero vector")
    row, col = row / row_norm, col / col_norm
    if abs(float(row @ col)) > 1e-3:
        raise DicomInputError(
            f"{frame.path}: ImageOrientationPatient row and column vectors are not orthogonal"
        )
    return row, col


def _check_consistent(frames: list[FrameInfo]) -> None:
    first = frames[0]
    reference = np.asarray(first.orientation)
    for frame in frames[1:]:
        if frame.rows != first.rows or frame.cols != first.cols:
            raise DicomInputError(
                f"inconsistent image size: {first.path} is {first.rows}x{first.cols}, "
                f"{frame.path} is {frame.rows}x{frame.cols}"
            )
        if np.max(np.abs(np.asarray(frame.orientation) - reference)) > ORIENTATION_TOLERANCE:
            raise DicomInputError(
                f"mixed orientations in one series: {first.path} and {frame.path} "
                "(a localizer or several stacks? choose or split the series)"
            )
        a, b = np.asarray(first.pixel_spacing), np.asarray(frame.pixel_spacing)
        if np.max(np.abs(a - b) / np.maximum(a, 1e-9)) > PIXEL_SPACING_TOLERANCE:
            raise DicomInputError(
                f"inconsistent pixel spacing: {first.path} has {tuple(a)}, "
                f"{frame.path} has {tuple(b)}"
            )


def _single_slice_spacing(frame: FrameInfo) -> float:
    for value in (frame.spacing_between_slices, frame.slice_thickness):
        if value is not None and value > 0:
            return float(value)
    return 1.0


def build_grid(frames: list[FrameInfo]) -> Grid:
    """Sort ``frames`` along the slice normal and verify they form one regular grid."""
    if not frames:
        raise DicomInputError("the series has no image frames")
    _check_consistent(frames)
    row, col = _unit_axes(frames[0])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array([f.position for f in frames], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    direction = np.column_stack([row, col, normal])
    row_spacing, col_spacing = (float(v) for v in frames[0].pixel_spacing)
    if len(frames) == 1:
        slice_spacing = _single_slice_spacing(frames[0])
        return Grid(
            (int(order[0]),), (slice_spacing, row_spacing, col_spacing), direction, positions
        )

    gaps = np.diff(along)
    duplicates = np.flatnonzero(gaps < DUPLICATE_TOLERANCE_MM)
    if duplicates.size:
        a, b = frames[order[duplicates[0]]], frames[order[duplicates[0] + 1]]
        where = f"{a.path}" if a.path == b.path else f"{a.path} and {b.path}"
        raise DicomInputError(
            f"duplicate slice position {along[duplicates[0]]:.3f} mm along the normal in "
            f"{where} ({duplicates.size} duplicate(s); several acquisitions in one series?)"
        )
    mean_gap = float((along[-1] - along[0]) / (len(frames) - 1))
    tolerance = max(SLICE_SPACING_TOLERANCE * mean_gap, DUPLICATE_TOLERANCE_MM)
    if float(np.max(np.abs(gaps - mean_gap))) > tolerance:
        raise DicomInputError(
            f"non-uniform slice spacing: gaps range from {gaps.min():.4g} to {gaps.max():.4g} mm "
            f"(tolerance {tolerance:.3g} mm); a missing or extra slice?"
        )
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if drift > 0.1 * min(row_spacing, col_spacing):
        raise DicomInputError(
            f"slice positions drift {drift:.3g} mm sideways off the slice normal "
            "(gantry tilt or sheared stack): not a regular grid"
        )
    return Grid(
        tuple(int(i) for i in order),
        (mean_gap, row_spacing, col_spacing),
        direction,
        positions,
    )
